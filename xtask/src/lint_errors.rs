//! A check `cargo xtask lint` runs on every thiserror type in the
//! workspace: no `#[error("...")]` message may print a field that is also
//! the error's source (`#[source]`, `#[from]`, or a field named `source`).
//! anyhow's `{:#}`, which oomtrace prints its errors with, writes the
//! message and then every source: such a cause comes out twice
//! (`X: X`). A message either prints its cause or leaves it to the chain.
//!
//! It reads the source text, not the compiled types: the attribute and the
//! fields that follow it, which is how every error type here is written.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// A message that prints its own source: where, and which field.
#[derive(Debug, PartialEq, Eq)]
pub struct Doubled {
    pub line: usize,
    pub field: String,
}

/// Every doubled cause in the workspace's Rust files (outside `target/`).
pub fn check(root: &Path) -> Result<()> {
    let mut found = Vec::new();
    for file in rust_files(root)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if !text.contains("#[error(") {
            continue;
        }
        let shown = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for doubled in doubled_causes(&text) {
            found.push(format!(
                "{shown}:{}: the message prints `{}`, which is also the error's source",
                doubled.line, doubled.field
            ));
        }
    }
    if !found.is_empty() {
        bail!(
            "error messages that print their cause twice under anyhow's {{:#}}; drop the \
             field from the message, or drop #[source]/#[from] (and name the field other \
             than `source`):\n  {}",
            found.join("\n  ")
        );
    }
    println!("ok: every error message prints its cause once");
    Ok(())
}

fn rust_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The doubled causes in one file's text.
pub fn doubled_causes(text: &str) -> Vec<Doubled> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("#[error(").map(|i| i + from) {
        let open = at + "#[error".len();
        let Some(close) = matching(bytes, open) else {
            break;
        };
        from = close + 1;
        let message = string_literals(&text[open + 1..close]);
        if text[open + 1..close].trim() == "transparent" {
            continue;
        }
        let sources = source_fields(text, close + 2);
        let line = text[..at].matches('\n').count() + 1;
        for field in placeholders(&message) {
            if sources.contains(&field) {
                out.push(Doubled { line, field });
            }
        }
    }
    out
}

/// The index of the bracket closing the one at `open`, skipping string
/// and char literals.
fn matching(bytes: &[u8], open: usize) -> Option<usize> {
    let (opening, closing) = match bytes.get(open)? {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        _ => return None,
    };
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b if b == opening => depth += 1,
            b if b == closing => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The contents of the string literals in `args`, joined (escapes and line
/// continuations left as they are: only `{...}` matters).
fn string_literals(args: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut escaped = false;
    for c in args.chars() {
        match (inside, escaped, c) {
            (false, _, '"') => inside = true,
            (true, false, '"') => inside = false,
            (true, false, '\\') => escaped = true,
            (true, true, _) => escaped = false,
            (true, false, c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// `{name}`, `{name:?}`, `{0}` in a format string; `{{` is a brace.
fn placeholders(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find('{') {
        if rest[i + 1..].starts_with('{') {
            rest = &rest[i + 2..];
            continue;
        }
        let Some(end) = rest[i..].find('}') else {
            break;
        };
        let inner = &rest[i + 1..i + end];
        let name = inner.split(':').next().unwrap_or("").trim();
        if !name.is_empty() {
            out.push(name.to_string());
        }
        rest = &rest[i + end + 1..];
    }
    out
}

/// The source fields of the variant or struct that starts after `at`
/// (past doc comments and other attributes): their names, or positions
/// (`0`) in a tuple variant.
fn source_fields(text: &str, at: usize) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut i = at;
    // Skip to the body: the first `{` or `(` after the item's name, unless
    // the item ends first (a unit variant: `,`).
    while i < bytes.len() {
        match bytes[i] {
            b'#' if bytes.get(i + 1) == Some(&b'[') => match matching(bytes, i + 1) {
                Some(end) => i = end,
                None => return Vec::new(),
            },
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i += text[i..].find('\n').unwrap_or(text.len() - i);
            }
            b'{' | b'(' => break,
            b',' | b';' => return Vec::new(),
            _ => {}
        }
        i += 1;
    }
    let Some(end) = matching(bytes, i) else {
        return Vec::new();
    };
    let tuple = bytes[i] == b'(';
    let mut out = Vec::new();
    for (position, field) in top_level_split(&text[i + 1..end]).into_iter().enumerate() {
        let marked = field.contains("#[source]") || field.contains("#[from]");
        let declaration = field
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .collect::<Vec<_>>()
            .join(" ");
        let without_attrs = strip_attributes(&declaration);
        let name = if tuple {
            position.to_string()
        } else {
            let before_colon = without_attrs.split(':').next().unwrap_or("");
            before_colon
                .trim()
                .trim_start_matches("pub ")
                .trim()
                .to_string()
        };
        if marked || (!tuple && name == "source") {
            out.push(name);
        }
    }
    out
}

/// `#[...]` attributes removed from a declaration.
fn strip_attributes(declaration: &str) -> String {
    let bytes = declaration.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'#'
            && bytes.get(i + 1) == Some(&b'[')
            && let Some(end) = matching(bytes, i + 1)
        {
            i = end + 1;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// `a, b<c, d>, e` split at the commas outside brackets.
fn top_level_split(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_prints_its_source_is_found() {
        let text = r#"
#[derive(Debug, thiserror::Error)]
pub enum E {
    #[error("cannot parse BTF at {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("writing output: {0}")]
    Io(#[source] io::Error),
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
    #[error(
        "mounting failed: {error}. \
         Mount it yourself"
    )]
    Mount {
        /// why
        #[source]
        error: std::io::Error,
    },
    #[error("implicit: {source}")]
    Implicit { source: std::io::Error },
}
"#;
        let fields: Vec<(usize, String)> = doubled_causes(text)
            .into_iter()
            .map(|d| (d.line, d.field))
            .collect();
        assert_eq!(
            fields,
            [
                (4, "source".to_string()),
                (10, "0".to_string()),
                (12, "0".to_string()),
                (14, "error".to_string()),
                (23, "source".to_string()),
            ]
        );
    }

    #[test]
    fn a_cause_printed_once_passes() {
        let text = r#"
pub enum E {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("left to the chain")]
    Chain(#[source] std::io::Error),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("{{literal}} braces and {what:?}")]
    Format { what: String, #[source] inner: X },
    #[error("unit")]
    Unit,
    #[error("{program}: {reason}")]
    Program { program: &'static str, reason: String },
}
#[error("a struct: {missing}")]
pub struct Missing {
    pub missing: String,
}
"#;
        assert_eq!(doubled_causes(text), []);
    }

    /// The workspace itself: what `cargo xtask lint` checks.
    #[test]
    fn this_workspace_prints_each_cause_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        check(&root).expect("no doubled causes");
    }
}
