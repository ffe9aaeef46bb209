//! Where records go: encoded as NDJSON or text on the pipeline's thread,
//! then handed through a bounded queue to a writer thread of their own
//! ([`writer`]), so that a slow disk or a stalled reader never holds up the
//! pipeline, let alone the ring buffer.

mod destination;
pub mod metrics;
pub mod writer;

use oomtrace_record::Record;

pub use destination::{Destination, WriteError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (NDJSON), for log pipelines.
    #[default]
    Json,
    /// One human line per record, like dmesg but complete.
    Text,
}

/// One record as one line, with its newline.
pub fn encode(record: &Record, format: Format) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = match format {
        Format::Json => escape_line_separators(serde_json::to_vec(record)?),
        Format::Text => oomtrace_record::text::line(record).into_bytes(),
    };
    line.push(b'\n');
    Ok(line)
}

/// Writes U+2028, U+2029 and U+0085 as `\uXXXX`. They are valid raw in
/// JSON, but line-splitting readers (Python's `str.splitlines`, older
/// JavaScript parsers) break a line at them. In valid JSON their UTF-8
/// bytes can only be inside strings, and 0xE2 / 0xC2 only ever start a
/// character, so replacing the byte sequences is exact.
fn escape_line_separators(json: Vec<u8>) -> Vec<u8> {
    if !json.iter().any(|&b| b == 0xE2 || b == 0xC2) {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while i < json.len() {
        let escaped: Option<&[u8]> = match json[i..] {
            [0xE2, 0x80, 0xA8, ..] => Some(b"\\u2028"),
            [0xE2, 0x80, 0xA9, ..] => Some(b"\\u2029"),
            [0xC2, 0x85, ..] => Some(b"\\u0085"),
            _ => None,
        };
        match escaped {
            Some(text) => {
                out.extend_from_slice(text);
                i += if json[i] == 0xC2 { 2 } else { 3 };
            }
            None => {
                out.push(json[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_separators_are_escaped_and_read_back() {
        let value = serde_json::json!({"path": "/a\u{2028}b\u{2029}c\u{85}d\u{e9}\u{20ac}"});
        let line = escape_line_separators(serde_json::to_vec(&value).expect("json"));
        let text = String::from_utf8(line).expect("utf-8");
        assert_eq!(
            text,
            "{\"path\":\"/a\\u2028b\\u2029c\\u0085d\u{e9}\u{20ac}\"}"
        );
        assert_eq!(text.lines().count(), 1);
        let back: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, value);
    }
}
