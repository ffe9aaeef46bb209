//! Any bytes, as a file `oomtrace report` reads: never a panic, no line
//! counted twice, and a story that renders as text, SVG and JSON.
//!
//! The report module is compiled from its sources here (oomtrace is a
//! binary crate, with no library to link against).

#![no_main]

use std::{io::Write as _, path::PathBuf};

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../oomtrace/src/report/mod.rs"]
mod report;

/// The input's file, in memory-backed /dev/shm when there is one.
fn scratch() -> PathBuf {
    let dir = ["/dev/shm", "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("oomtrace-fuzz-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("writing the input");
    // The first byte picks a `--field` path, as the command line may.
    let field = match data.first() {
        Some(b) if b % 4 == 1 => Some("log".to_string()),
        Some(b) if b % 4 == 2 => Some("kubernetes.log".to_string()),
        _ => None,
    };
    let options = report::Options {
        inputs: vec![path.clone()],
        field,
        strict: false,
        loop_count: 3,
        loop_window_s: 600.0,
        filters: report::Filters::default(),
    };
    let mut warnings = Vec::new();
    let outcome = report::run(&options, &mut warnings).expect("a file that exists");
    let i = &outcome.report.input;
    // A line is a record, another program's line, too long, or
    // malformed (a record that does not read as its type is both a record
    // and malformed), or a piece of a split line; a file that ends inside
    // a split line is one more malformed.
    assert!(
        i.other_lines + i.too_long + i.malformed <= i.lines + 1 && i.records <= i.lines,
        "lines counted more than once: {i:?}"
    );
    // The renderings of any story never panic either.
    let _ = report::text::render(&outcome.report);
    let _ = report::svg::render(&outcome.report);
    let _ = serde_json::to_string(&outcome.report).expect("json");
    let _ = std::fs::remove_file(&path);
});
