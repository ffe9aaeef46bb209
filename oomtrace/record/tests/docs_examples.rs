//! The examples in README.md and docs/*.md are records of today's format:
//! every fenced `json` block (one JSON value, or NDJSON lines) validates
//! against the JSON Schema and is exactly what the record types write (no
//! field missing, none extra), every `text-of` block is its example's
//! `--format text` line, and every `kmsg` block (the kernel's own line)
//! carries its example's numbers. `sudo cargo xtask docs --capture` makes
//! them again from real kills; `cargo xtask docs` redoes the text blocks.

mod common;

use std::path::{Path, PathBuf};

use oomtrace_record::{Record, read, text};
use serde_json::Value;

const REFRESH: &str = "refresh them with `sudo cargo xtask docs --capture`";

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// A fenced block: its language, the marker on the line before it
/// (`example:NAME`, `text-of:NAME`, ...), its first line number and text.
struct Block {
    lang: String,
    marker: Option<(String, String)>,
    line: usize,
    body: String,
}

fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or(lines.len());
        let marker = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- "))
            .and_then(|m| m.strip_suffix(" -->"))
            .and_then(|m| m.split_once(':'))
            .map(|(kind, rest)| {
                let name = rest.split_whitespace().next().unwrap_or("");
                (kind.to_string(), name.to_string())
            });
        out.push(Block {
            lang: lang.trim().to_string(),
            marker,
            line: i + 2,
            body: lines[i + 1..end.min(lines.len())].join("\n"),
        });
        i = end + 1;
    }
    out
}

/// One JSON value per example: the whole block, or else each line.
fn examples(block: &Block) -> Vec<(usize, String)> {
    if serde_json::from_str::<Value>(&block.body).is_ok() {
        return vec![(block.line, block.body.clone())];
    }
    block
        .body
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (block.line + n, l.to_string()))
        .collect()
}

/// Leaf paths of `value`, for naming what differs.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, &format!("{prefix}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_json_example_is_a_record_of_today() {
    let (schemas, index) = common::compiled();
    let mut checked = 0;
    for (path, doc) in documents() {
        let shown = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into());
        for block in blocks(&doc).iter().filter(|b| b.lang == "json") {
            for (line, example) in examples(block) {
                let at = format!("{shown} line {line}");
                let value: Value = serde_json::from_str(&example)
                    .unwrap_or_else(|e| panic!("{at}: not JSON ({e}): {example}"));
                if let Err(error) = schemas.validate(&value, index) {
                    panic!(
                        "{at}: does not validate against `oomtrace schema` ({REFRESH}): {error:#}"
                    );
                }
                let record = read::parse_line(&example)
                    .unwrap_or_else(|e| panic!("{at}: not a record ({e})"));
                assert!(
                    !matches!(record, Record::Unknown),
                    "{at}: an unknown record type"
                );
                let written = serde_json::to_value(&record).expect("serialize");
                if written != value {
                    let (mut have, mut want) = (Vec::new(), Vec::new());
                    leaves(&value, "", &mut have);
                    leaves(&written, "", &mut want);
                    let missing: Vec<&String> = want.iter().filter(|p| !have.contains(p)).collect();
                    let extra: Vec<&String> = have.iter().filter(|p| !want.contains(p)).collect();
                    panic!(
                        "{at}: not what oomtrace writes today ({REFRESH}); missing {missing:?}, \
                         not written {extra:?}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "README.md's examples were not found ({checked})"
    );
}

/// The example records of one document, by marker name.
fn named_examples(doc: &str) -> Vec<(String, Record)> {
    blocks(doc)
        .into_iter()
        .filter_map(|b| match &b.marker {
            Some((kind, name)) if kind == "example" => {
                let record = read::parse_line(&b.body).expect("an example record");
                Some((name.clone(), record))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn text_examples_are_their_records_rendered() {
    for (path, doc) in documents() {
        let examples = named_examples(&doc);
        for block in blocks(&doc) {
            let Some((kind, name)) = &block.marker else {
                continue;
            };
            if kind != "text-of" {
                continue;
            }
            let (_, record) = examples
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{}: no example {name}", path.display()));
            assert_eq!(
                block.body,
                text::line(record),
                "{} line {}: the text of example {name} differs: run `cargo xtask docs`",
                path.display(),
                block.line
            );
        }
    }
}

#[test]
fn kernel_lines_carry_their_records_numbers() {
    for (path, doc) in documents() {
        let examples = named_examples(&doc);
        for block in blocks(&doc) {
            let Some((kind, name)) = &block.marker else {
                continue;
            };
            if kind != "kmsg" {
                continue;
            }
            let Some((_, Record::OomKill(kill))) = examples.iter().find(|(n, _)| n == name) else {
                panic!("{}: no kill example {name}", path.display());
            };
            let v = &kill.victim;
            let kb = |bytes: Option<u64>| bytes.map_or(0, |b| b / 1024);
            let expected = [
                format!("Killed process {} (", v.pid.unwrap_or(0)),
                format!("({})", v.comm.as_deref().unwrap_or("")),
                format!("total-vm:{}kB", kb(v.total_vm_bytes)),
                format!("anon-rss:{}kB", kb(v.rss.anon_bytes)),
                format!("file-rss:{}kB", kb(v.rss.file_bytes)),
                format!("shmem-rss:{}kB", kb(v.rss.shmem_bytes)),
                format!("UID:{}", v.uid.unwrap_or(0)),
                format!("pgtables:{}kB", kb(v.pgtables_bytes)),
                format!("oom_score_adj:{}", v.oom_score_adj.unwrap_or(0)),
            ];
            for part in expected {
                assert!(
                    block.body.contains(&part),
                    "{}: the kernel's line for {name} lacks {part:?} ({REFRESH}): {}",
                    path.display(),
                    block.body
                );
            }
        }
    }
}
