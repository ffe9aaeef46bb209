//! `cargo xtask docs`: the generated parts of the documentation.
//!
//! - docs/schema.md's field tables, from the record types.
//! - docs/report.md's field table, from `oomtrace report --json`'s types.
//! - README.md's example records. Each sits in a fenced block after a
//!   `<!-- example:NAME -->` marker (`<!-- example:NAME line -->` for one
//!   NDJSON line rather than pretty-printed JSON). `--capture` (root) causes
//!   the real OOM kills behind them (tests/src/readme.rs) and writes the
//!   records in. A `<!-- text-of:NAME -->` block is always rewritten as
//!   `--format text` renders example NAME, a `<!-- memory-of:NAME -->`
//!   block gets its `memory` object alone, and a `<!-- kmsg:NAME -->`
//!   block gets the kernel's own line captured with it.
//!
//! The record crate's tests (tests/docs_examples.rs) fail when an example
//! is not exactly what today's collector writes, or a text block is not its
//! example's rendering.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cmds::build;
use crate::util::{cargo_cmd, is_root, run, target_dir, workspace_root};

pub fn docs(capture: bool) -> Result<()> {
    let root = workspace_root()?;
    let examples = target_dir()?.join("readme-examples");
    if capture {
        capture_examples(&examples)?;
    }
    commit_schema(&root)?;
    rewrite(&root.join("docs/schema.md"), |doc| {
        oomtrace_record::fill_field_tables(doc).map_err(|e| anyhow::anyhow!(e))
    })?;
    // The report document's field table, from `oomtrace report`'s own
    // schema (the binary's types, which this crate cannot link).
    let table = crate::util::capture(cargo_cmd()?.args([
        "run",
        "--quiet",
        "--package",
        "oomtrace",
        "--",
        "report",
        "--json-schema-markdown",
    ]))
    .context("printing the report document's field table")?;
    rewrite(&root.join("docs/report.md"), |doc| {
        fill_report_fields(doc, &table)
    })?;
    rewrite(&root.join("README.md"), |doc| {
        fill_examples(doc, |name| {
            let path = examples.join(name);
            path.exists()
                .then(|| std::fs::read_to_string(&path))
                .transpose()
                .with_context(|| format!("reading {}", path.display()))
        })
    })?;
    if !capture && !examples.exists() {
        println!(
            "note: README.md's example records are refreshed from real kills with `sudo cargo \
             xtask docs --capture`"
        );
    }
    Ok(())
}

/// docs/report.md with the table between its `<!-- report-fields -->`
/// markers replaced.
fn fill_report_fields(doc: &str, table: &str) -> Result<String> {
    const OPEN: &str = "<!-- report-fields -->";
    const CLOSE: &str = "<!-- /report-fields -->";
    let (Some(start), Some(end)) = (doc.find(OPEN), doc.find(CLOSE)) else {
        bail!("no {OPEN} ... {CLOSE} markers");
    };
    if end < start {
        bail!("{CLOSE} before {OPEN}");
    }
    Ok(format!("{}{OPEN}\n{table}{}", &doc[..start], &doc[end..]))
}

/// Writes the schema of this version to its committed copy, unless the
/// change would break readers of records of the same version (a field
/// removed, renamed or retyped): then `SCHEMA_VERSION` must be bumped.
fn commit_schema(root: &Path) -> Result<()> {
    let version = oomtrace_record::SCHEMA_VERSION;
    let path = root.join(oomtrace_record::committed_schema_path(version));
    let current = oomtrace_record::json_schema();
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let committed: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let broken = oomtrace_record::breaking_changes(&committed, &current);
        if !broken.is_empty() {
            bail!(
                "the record types break schema {version}, which readers rely on:\n  {}\n\
                 keep the fields, or bump SCHEMA_VERSION (a new {} is then written)",
                broken.join("\n  "),
                oomtrace_record::committed_schema_path(version + 1)
            );
        }
        if committed == current {
            println!("ok: {} is current", path.display());
            return Ok(());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&current)?;
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("updated: {}", path.display());
    Ok(())
}

fn rewrite(path: &Path, fill: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let filled = fill(&doc).with_context(|| format!("filling {}", path.display()))?;
    if filled == doc {
        println!("ok: {} is current", path.display());
        return Ok(());
    }
    std::fs::write(path, filled).with_context(|| format!("writing {}", path.display()))?;
    println!("updated: {}", path.display());
    Ok(())
}

/// Builds the collector and runs the ignored `readme_examples` test, which
/// causes the README's kills and leaves their records in `dir`.
fn capture_examples(dir: &Path) -> Result<()> {
    if !is_root() {
        bail!(
            "capturing the README's examples causes real OOM kills in cgroups it creates and \
             needs root: run `sudo cargo xtask docs --capture`"
        );
    }
    let bin = build()?;
    // The Docker example's image holds the static workload.
    let static_bins = crate::vmtest::build_static()?;
    let _ = std::fs::remove_dir_all(dir);
    run(cargo_cmd()?
        .args([
            "test",
            "--package",
            "oomtrace-tests",
            "--test",
            "e2e",
            "--",
            "--ignored",
            "--exact",
            "readme_examples",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("OOMTRACE_BIN", &bin)
        .env(
            "OOMTRACE_STATIC_WORKLOAD",
            static_bins.join("oomtrace-workload"),
        )
        .env("OOMTRACE_EXAMPLES_DIR", dir))
    .context("capturing the README's examples failed (see above)")
}

/// A fenced block: the marker's line index, the fence's first and last
/// line indexes.
struct Block {
    open: usize,
    close: usize,
}

/// The fenced block that starts on the line after `marker`.
fn block_after(lines: &[&str], marker: usize) -> Result<Block> {
    let open = marker + 1;
    if !lines.get(open).is_some_and(|l| l.starts_with("```")) {
        bail!(
            "line {}: a fenced block must follow {}",
            marker + 1,
            lines[marker]
        );
    }
    let close = (open + 1..lines.len())
        .find(|&i| lines[i].trim_end() == "```")
        .with_context(|| format!("line {}: an unclosed block", open + 1))?;
    Ok(Block { open, close })
}

/// `doc` with its example blocks filled: records from `captured(NAME.json)`
/// where there is one, text renderings and kernel lines after them.
pub fn fill_examples(
    doc: &str,
    captured: impl Fn(&str) -> Result<Option<String>>,
) -> Result<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut examples: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- ")
            .and_then(|m| m.strip_suffix(" -->"))
        else {
            out.push(line.to_string());
            i += 1;
            continue;
        };
        let (kind, rest) = marker.split_once(':').unwrap_or((marker, ""));
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap_or("").to_string();
        let body: Option<String> = match kind {
            "example" => {
                let block = block_after(&lines, i)?;
                let current = lines[block.open + 1..block.close].join("\n");
                let body = match captured(&format!("{name}.json"))? {
                    Some(line) => format_record(line.trim(), words.next() == Some("line"))
                        .with_context(|| format!("the captured {name}.json"))?,
                    None => current,
                };
                examples.push((name.clone(), body.clone()));
                Some(body)
            }
            "text-of" => {
                let json = examples
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, json)| json)
                    .with_context(|| format!("no example {name} before its text-of"))?;
                let record = oomtrace_record::read::parse_line(json)
                    .with_context(|| format!("example {name} is not a record"))?;
                Some(oomtrace_record::text::line(&record))
            }
            "memory-of" => {
                let json = examples
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, json)| json)
                    .with_context(|| format!("no example {name} before its memory-of"))?;
                let record: serde_json::Value = serde_json::from_str(json)
                    .with_context(|| format!("example {name} is not JSON"))?;
                Some(compact_scalar_arrays(&serde_json::to_string_pretty(
                    &record["memory"],
                )?))
            }
            "kmsg" => captured(&format!("{name}.kmsg"))?.map(|l| l.trim().to_string()),
            _ => {
                out.push(line.to_string());
                i += 1;
                continue;
            }
        };
        let block = block_after(&lines, i)?;
        out.push(line.to_string());
        out.push(lines[block.open].to_string());
        match body {
            Some(body) => out.push(body),
            None => out.extend(
                lines[block.open + 1..block.close]
                    .iter()
                    .map(|l| l.to_string()),
            ),
        }
        out.push(lines[block.close].to_string());
        i = block.close + 1;
    }
    let mut filled = out.join("\n");
    if doc.ends_with('\n') {
        filled.push('\n');
    }
    Ok(filled)
}

/// Pretty JSON with every array of plain values on one line: a memory
/// history reads as one sample per line.
fn compact_scalar_arrays(pretty: &str) -> String {
    let lines: Vec<&str> = pretty.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_end().ends_with('[') {
            let items: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with(']'))
                .map(|l| l.trim().trim_end_matches(','))
                .collect();
            let close = i + 1 + items.len();
            let plain = items
                .iter()
                .all(|item| !item.is_empty() && !item.ends_with(['[', '{']));
            if plain && let Some(end) = lines.get(close) {
                out.push(format!("{}{}{}", line, items.join(", "), end.trim_start()));
                i = close + 1;
                continue;
            }
        }
        out.push(line.to_string());
        i += 1;
    }
    out.join("\n")
}

/// A record as the README shows it: pretty, or on one line as written.
/// Through the record types, so fields come in the order the collector
/// writes them.
fn format_record(line: &str, one_line: bool) -> Result<String> {
    let record = oomtrace_record::read::parse_line(line).context("not a record")?;
    Ok(if one_line {
        serde_json::to_string(&record)?
    } else {
        serde_json::to_string_pretty(&record)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: &str = r#"{"type":"late_exit","schema":1,"hostname":"h","boot_id":"b","run_id":"r","seq":1,"time":"t","boot_ns":5,"pid":7,"tid":7,"exit":{"observed":true,"code":137,"signal":9,"delay_ms":2.5}}"#;

    #[test]
    fn examples_are_filled_from_captures_and_text_follows() {
        let doc = "intro\n<!-- example:late -->\n```json\n{}\n```\nmiddle\n\
                   <!-- example:late2 line -->\n```json\nold\n```\n\
                   <!-- text-of:late -->\n```text\nstale\n```\n<!-- kmsg:late -->\n```text\nkeep\n```\n";
        let filled = fill_examples(doc, |name| {
            Ok(match name {
                "late.json" | "late2.json" => Some(LATE.to_string()),
                _ => None,
            })
        })
        .expect("fills");
        assert!(
            filled.contains("```json\n{\n  \"type\": \"late_exit\","),
            "{filled}"
        );
        assert!(
            filled.contains(&format!("```json\n{LATE}\n```")),
            "{filled}"
        );
        assert!(
            filled.contains("```text\nt late exit of OOM kill #1: pid 7 exit 137"),
            "{filled}"
        );
        assert!(filled.contains("```text\nkeep\n```\n"), "{filled}");
        assert!(filled.starts_with("intro\n") && filled.contains("\nmiddle\n"));
        // Without captures, only the text follows the examples there.
        let again = fill_examples(&filled, |_| Ok(None)).expect("fills");
        assert_eq!(again, filled);
    }

    #[test]
    fn scalar_arrays_go_on_one_line() {
        let pretty = serde_json::to_string_pretty(
            &serde_json::json!({"h": [[1, 2], [3, 4]], "e": [], "o": [{"a": 1}]}),
        )
        .expect("json");
        let compact = compact_scalar_arrays(&pretty);
        assert!(compact.contains("    [1, 2],\n    [3, 4]\n"), "{compact}");
        assert!(compact.contains("\"o\": [\n    {"), "{compact}");
        let back: serde_json::Value = serde_json::from_str(&compact).expect("still JSON");
        assert_eq!(back["h"][1][0], 3);
    }

    #[test]
    fn a_marker_without_its_block_is_an_error() {
        let error = fill_examples("<!-- example:x -->\ntext\n", |_| Ok(None))
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("fenced block")));
    }

    /// The README as committed: filling it without captures changes nothing
    /// (its text blocks render its examples).
    #[test]
    fn the_readme_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let doc = std::fs::read_to_string(&path).expect("README.md");
        let filled = fill_examples(&doc, |_| Ok(None)).expect("fills");
        assert!(
            filled == doc,
            "README.md's text examples differ from their records: run `cargo xtask docs`"
        );
    }
}
