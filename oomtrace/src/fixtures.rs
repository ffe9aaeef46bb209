//! Real records for unit tests: the record crate's compatibility fixture
//! (start, kills, a late exit, stop, as a collector wrote them).

use serde_json::Value;

pub const RECORDS: &str = include_str!("../record/tests/schema1-with-origin.ndjson");

/// The fixture's first record of type `kind`, as JSON to edit.
pub fn record(kind: &str) -> Value {
    RECORDS
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("fixture"))
        .find(|v| v["type"] == kind)
        .expect("fixture record")
}
