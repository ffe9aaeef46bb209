//! Properties of the record reader, over generated inputs: bytes of any
//! kind never panic and are counted as skipped; records in every shape a
//! pipeline leaves (plain, Docker json-file split into pieces, CRI `P`/`F`,
//! journald `MESSAGE`, a `--field` path, gzip), mixed with other lines and
//! read in chunks of any size, give the same story as the plain records,
//! with every line counted exactly.

use std::{io::Write as _, path::Path};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

use crate::fixtures::RECORDS as FIXTURE;

fn options(inputs: Vec<PathBuf>, field: Option<&str>) -> Options {
    Options {
        inputs,
        field: field.map(str::to_string),
        strict: false,
        loop_count: 3,
        loop_window_s: 600.0,
        filters: Filters::default(),
    }
}

/// A temporary file, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(bytes: &[u8]) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("oomtrace-props-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        Self(path)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn report(file: &Path, field: Option<&str>, chunk_bytes: usize) -> (Report, String) {
    let mut warnings = Vec::new();
    let outcome = run_chunked(
        &options(vec![file.to_path_buf()], field),
        &mut warnings,
        chunk_bytes,
    )
    .expect("report");
    (
        outcome.report,
        String::from_utf8_lossy(&warnings).into_owned(),
    )
}

/// The document without its input counts (which differ by shape).
fn story(r: &Report) -> Value {
    let mut v = serde_json::to_value(r).expect("json");
    v.as_object_mut().expect("object").remove("input");
    v
}

/// A record: a fixture's type, on one of a few nodes, with a unique seq
/// and time, and an unknown field of any text (up to 40 KiB: past
/// Docker's 16 KiB pieces).
fn record() -> impl Strategy<Value = Value> {
    let kinds: Vec<Value> = FIXTURE
        .lines()
        .map(|l| serde_json::from_str(l).expect("fixture"))
        .collect();
    (
        proptest::sample::select(kinds),
        0..3usize,
        0..1440u32,
        prop_oneof![".{0,20}", "[ -~é€😀]{0,400}", "x{15000,40000}"],
    )
        .prop_map(|(mut r, node, minute, pad)| {
            r["hostname"] = json!(format!("node-{node}"));
            r["boot_id"] = json!(format!("boot-{node}"));
            r["time"] = json!(format!(
                "2026-12-05T{:02}:{:02}:00Z",
                minute / 60,
                minute % 60
            ));
            r["future_field"] = json!(pad);
            r
        })
}

/// Another program's line: not JSON, not a CRI line.
fn other_line() -> impl Strategy<Value = String> {
    "[a-z][a-z =.:0-9]{0,60}"
}

/// Records (seqs made unique) and other lines, interleaved.
fn day() -> impl Strategy<Value = Vec<Result<String, String>>> {
    proptest::collection::vec(
        prop_oneof![3 => record().prop_map(Ok), 1 => other_line().prop_map(Err)],
        0..24,
    )
    .prop_map(|lines| {
        lines
            .into_iter()
            .enumerate()
            .map(|(i, line)| {
                line.map(|mut r| {
                    r["seq"] = json!(i);
                    r["boot_ns"] = json!(i);
                    r.to_string()
                })
            })
            .collect()
    })
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Plain,
    /// Pieces of at most this many bytes.
    Docker(usize),
    Cri(usize),
    Journald,
    /// `--field kubernetes.log`.
    Field,
    /// Docker's pieces, gzipped.
    GzipDocker(usize),
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Plain),
        // Docker and the kubelet split at 16 KiB; smaller pieces too.
        prop_oneof![Just(16 * 1024), 8..4096usize].prop_map(Shape::Docker),
        prop_oneof![Just(16 * 1024), 8..4096usize].prop_map(Shape::Cri),
        Just(Shape::Journald),
        Just(Shape::Field),
        (8..4096usize).prop_map(Shape::GzipDocker),
    ]
}

/// `text` cut into pieces of at most `size` bytes, at character ends.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// The file's bytes and its number of lines.
fn wrap(day: &[Result<String, String>], shape: Shape) -> (Vec<u8>, u64) {
    let mut out = String::new();
    let mut lines = 0u64;
    for line in day {
        let record = match line {
            Ok(record) => record,
            Err(other) => {
                out.push_str(other);
                out.push('\n');
                lines += 1;
                continue;
            }
        };
        let wrapped: Vec<String> = match shape {
            Shape::Plain => vec![record.clone()],
            Shape::Docker(size) | Shape::GzipDocker(size) => {
                let whole = format!("{record}\n");
                pieces(&whole, size)
                    .into_iter()
                    .map(|p| {
                        json!({"log": p, "stream": "stdout", "time": "2026-12-05T00:00:00.1Z"})
                            .to_string()
                    })
                    .collect()
            }
            Shape::Cri(size) => {
                let all = pieces(record, size);
                let last = all.len() - 1;
                all.into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let tag = if i == last { "F" } else { "P" };
                        format!("2026-12-05T00:00:00.100000000Z stdout {tag} {p}")
                    })
                    .collect()
            }
            Shape::Journald => {
                vec![json!({"MESSAGE": record, "_HOSTNAME": "n", "PRIORITY": "6"}).to_string()]
            }
            Shape::Field => {
                vec![json!({"kubernetes": {"log": record}, "stream": "stdout"}).to_string()]
            }
        };
        for w in wrapped {
            out.push_str(&w);
            out.push('\n');
            lines += 1;
        }
    }
    let bytes = if let Shape::GzipDocker(_) = shape {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(out.as_bytes()).expect("gzip");
        e.finish().expect("gzip")
    } else {
        out.into_bytes()
    };
    (bytes, lines)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_skipped_and_counted(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1..512usize,
    ) {
        let file = Temp::new(&bytes);
        let (r, _) = report(&file.0, None, chunk);
        let i = &r.input;
        let lines = bytes.split(|b| *b == b'\n').count() as u64 - u64::from(bytes.ends_with(b"\n") || bytes.is_empty());
        // Bytes that begin as gzip are read as gzip (and fail as one).
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            prop_assert_eq!(i.lines, lines);
        }
        prop_assert_eq!(i.records, 0);
        prop_assert_eq!(i.other_lines + i.malformed + i.too_long, i.lines);
        prop_assert!(r.subjects.is_empty());
    }

    #[test]
    fn records_in_every_shape_read_back_the_same(
        day in day(),
        shape in shape(),
        chunk in prop_oneof![1..2048usize, Just(parallel::CHUNK_BYTES)],
    ) {
        let records = day.iter().filter(|l| l.is_ok()).count() as u64;
        let others = day.len() as u64 - records;
        let (plain, _) = wrap(&day, Shape::Plain);
        let plain = Temp::new(&plain);
        let (want, warnings) = report(&plain.0, None, parallel::CHUNK_BYTES);
        prop_assert_eq!(want.input.records, records, "{}", warnings);
        prop_assert_eq!(want.input.by_type.values().sum::<u64>(), records);

        let (bytes, lines) = wrap(&day, shape);
        let file = Temp::new(&bytes);
        let field = matches!(shape, Shape::Field).then_some("kubernetes.log");
        let (got, warnings) = report(&file.0, field, chunk);
        let i = &got.input;
        prop_assert_eq!(i.lines, lines);
        prop_assert_eq!(i.records, records, "{}", warnings);
        prop_assert_eq!(i.other_lines, others);
        prop_assert_eq!(i.malformed + i.too_long + i.read_errors + i.duplicates, 0, "{}", warnings);
        prop_assert_eq!(&i.by_type, &want.input.by_type);
        prop_assert_eq!(story(&got), story(&want));
    }
}
