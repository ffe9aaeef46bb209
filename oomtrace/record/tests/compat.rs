//! Records written by earlier and current collectors (real output, kept as
//! fixtures) still read, and still validate against today's JSON Schema:
//! the compatibility promise of schema version 1.
//!
//! - `schema1-before-origin.ndjson`: written before `hostname`, `boot_id`,
//!   `run_id`, `late_exit` and the added counters existed (start, a kill
//!   joined to its exit 137, stop).
//! - `schema1-with-origin.ndjson`: written after them, with a kill whose
//!   victim exited after the exit wait and the `late_exit` that closed it.

mod common;
use common::compiled;
use std::path::Path;

use oomtrace_record::{Record, read};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validate_all(name: &str) -> Vec<Record> {
    let text = fixture(name);
    let (schemas, index) = compiled();
    for (n, line) in text.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if let Err(error) = schemas.validate(&value, index) {
            panic!("{name} line {}: {error:#}\n{line}", n + 1);
        }
    }
    read::records(text.as_bytes())
        .map(|r| r.unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

#[test]
fn records_from_before_the_origin_fields_still_validate_and_read() {
    let records = validate_all("schema1-before-origin.ndjson");
    let types: Vec<&str> = records.iter().map(Record::type_name).collect();
    assert_eq!(types, ["start", "oom_kill", "stop"]);
    let Record::OomKill(kill) = &records[1] else {
        unreachable!()
    };
    assert_eq!(kill.exit.code, Some(137));
    assert_eq!(kill.origin.run_id, None, "absent in old records");
    let oom = &kill.oom;
    assert_eq!(
        (oom.killed, oom.signal_kill_seq, oom.group_kill),
        (None, None, None),
        "added later"
    );
}

#[test]
fn current_records_validate_and_read() {
    let records = validate_all("schema1-with-origin.ndjson");
    let late = records
        .iter()
        .find_map(|r| match r {
            Record::LateExit(late) => Some(late),
            _ => None,
        })
        .expect("a late_exit");
    let closed = records
        .iter()
        .find_map(|r| match r {
            Record::OomKill(kill) if kill.seq == late.seq => Some(kill),
            _ => None,
        })
        .expect("the kill it closes");
    assert!(!closed.exit.observed);
    // Written before `oom.killed`, `signal_kill_seq` and `group_kill`.
    assert_eq!(closed.oom.killed, None);
    assert_eq!(late.pid, closed.victim.pid);
    assert_eq!(late.exit.code, Some(137));
    assert!(
        records
            .iter()
            .all(|r| r.origin().is_some_and(|o| o.run_id.is_some()))
    );
}

#[test]
fn the_schema_rejects_what_breaks_the_contract() {
    let (schemas, index) = compiled();
    let text = fixture("schema1-with-origin.ndjson");
    let kill_line = text
        .lines()
        .find(|l| l.contains("\"oom_kill\""))
        .expect("a kill");
    let kill: serde_json::Value = serde_json::from_str(kill_line).expect("json");
    let broken = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut value = kill.clone();
        change(&mut value);
        schemas.validate(&value, index).is_err()
    };
    assert!(broken(&|v| v["seq"] = "seven".into()), "a wrong type");
    assert!(
        broken(&|v| {
            v["victim"].as_object_mut().map(|o| o.remove("pid"));
        }),
        "a field that shipped with the record, missing"
    );
    assert!(
        broken(&|v| v["oom"]["limit_scope"] = "planet".into()),
        "an unknown value"
    );
    assert!(
        !broken(&|v| {
            v.as_object_mut().map(|o| o.remove("run_id"));
        }),
        "a field added later may be missing"
    );
}
