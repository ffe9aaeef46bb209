//! Taking records out of what log pipelines wrap them in, line by line.
//!
//! Detected per line (up to three wrappers deep, e.g. a Fluent Bit export
//! of a CRI log line):
//! - an oomtrace record: a JSON object with `type` and `schema`;
//! - Docker's json-file log driver: `{"log":"…\n","stream":"stdout","time":…}`.
//!   Docker splits a line longer than 16 KiB into pieces, each without the
//!   trailing newline but the last: pieces are joined per stream;
//! - the CRI log format the kubelet keeps under /var/log/pods:
//!   `TIME STREAM P|F CONTENT`, `P` pieces joined up to the `F`;
//! - `journalctl -o json`: `MESSAGE` (a string, or an array of bytes);
//! - other exports (Fluent Bit, Vector, Loki): a string `log`, `message` or
//!   `line` field, or the path given with `--field`.
//!
//! Anything else is another program's line: skipped and counted. A line
//! that claims to be a record but is not one is malformed.

use std::collections::HashMap;

use oomtrace_record::Record;
use serde_json::{Map, Value};

use super::input::MAX_LINE;

/// How deep wrappers nest at most.
const MAX_DEPTH: usize = 3;

/// What one input line holds.
#[derive(Debug)]
pub enum Unwrapped {
    /// An oomtrace record's JSON text, and its parsed form.
    Record(String, Value),
    /// A record as oomtrace writes it (`{"type":"` first, no wrapper),
    /// read straight into its type: the common case, parsed once. With
    /// its text.
    Parsed(String, Box<Record>),
    /// A piece of a split line; the rest is to come.
    Pending,
    /// Not oomtrace's: another program's log line.
    Other,
    /// A joined line longer than [`MAX_LINE`].
    TooLong,
    /// Claims to be a record (or a wrapper) and is not: why.
    Malformed(String),
}

/// Equal kinds with equal texts (a parsed record is its text).
impl PartialEq for Unwrapped {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Record(a, x), Self::Record(b, y)) => a == b && x == y,
            (Self::Parsed(a, _), Self::Parsed(b, _)) => a == b,
            (Self::Malformed(a), Self::Malformed(b)) => a == b,
            (Self::Pending, Self::Pending)
            | (Self::Other, Self::Other)
            | (Self::TooLong, Self::TooLong) => true,
            _ => false,
        }
    }
}

/// The state of one source: the pieces of split lines waiting for their
/// end, per wrapper and stream.
#[derive(Default)]
pub struct Unwrapper {
    /// `--field`: the dotted path of the record in each JSON line.
    field: Option<Vec<String>>,
    pending: HashMap<(&'static str, String), String>,
}

impl Unwrapper {
    pub fn new(field: Option<&str>) -> Self {
        Self {
            field: field.map(|f| f.split('.').map(str::to_string).collect()),
            pending: HashMap::new(),
        }
    }

    /// Pieces still waiting when the source ended (a cut log).
    pub fn unfinished(&self) -> usize {
        self.pending.len()
    }

    pub fn line(&mut self, line: &str) -> Unwrapped {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(path) = self.field.clone() {
            return self.forced(line, &path);
        }
        self.unwrap(line, 0)
    }

    fn forced(&mut self, line: &str, path: &[String]) -> Unwrapped {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
            return Unwrapped::Other;
        };
        let mut at = &Value::Object(map.clone());
        for key in path {
            match at.get(key) {
                Some(next) => at = next,
                None => return Unwrapped::Other,
            }
        }
        match at {
            Value::String(inner) => self.unwrap(&inner.clone(), 1),
            Value::Object(_) => {
                let text = at.to_string();
                self.unwrap(&text, 1)
            }
            _ => Unwrapped::Other,
        }
    }

    fn unwrap(&mut self, line: &str, depth: usize) -> Unwrapped {
        if depth > MAX_DEPTH {
            return Unwrapped::Other;
        }
        let text = line.trim();
        // As the collector writes it: straight into the record type, with
        // no generic JSON tree built first (a tree, then the record, took
        // twice as long). Anything else takes the general path.
        if let Some(record) = typed(text) {
            return Unwrapped::Parsed(text.to_string(), Box::new(record));
        }
        if text.starts_with('{') {
            return match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => self.object(text, map, depth),
                Ok(_) => Unwrapped::Other,
                Err(error) if claims_record(text) => {
                    Unwrapped::Malformed(format!("not a whole JSON object: {error}"))
                }
                Err(_) => Unwrapped::Other,
            };
        }
        match cri(text) {
            Some((stream, partial, content)) => self.piece("cri", stream, content, !partial, depth),
            None => Unwrapped::Other,
        }
    }

    fn object(&mut self, text: &str, map: Map<String, Value>, depth: usize) -> Unwrapped {
        if map.get("type").is_some_and(Value::is_string) && map.contains_key("schema") {
            return Unwrapped::Record(text.to_string(), Value::Object(map));
        }
        if let Some(Value::String(log)) = map.get("log") {
            if let (Some(Value::String(stream)), true) =
                (map.get("stream"), map.contains_key("time"))
            {
                // Docker's json-file: a piece without its newline has more
                // to come.
                let (content, last) = match log.strip_suffix('\n') {
                    Some(c) => (c, true),
                    None => (log.as_str(), false),
                };
                return self.piece("docker", stream, content, last, depth);
            }
            return self.unwrap(log, depth + 1);
        }
        match map.get("MESSAGE") {
            Some(Value::String(message)) => return self.unwrap(message, depth + 1),
            Some(Value::Array(bytes)) => {
                // journald gives a message that is not UTF-8 as its bytes.
                let bytes: Vec<u8> = bytes
                    .iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                return self.unwrap(&String::from_utf8_lossy(&bytes), depth + 1);
            }
            _ => {}
        }
        for key in ["message", "line"] {
            if let Some(Value::String(inner)) = map.get(key) {
                return self.unwrap(inner, depth + 1);
            }
        }
        if claims_record(text) {
            return Unwrapped::Malformed(
                "a `type` without `schema`: not an oomtrace record".into(),
            );
        }
        Unwrapped::Other
    }

    fn piece(
        &mut self,
        wrapper: &'static str,
        stream: &str,
        content: &str,
        last: bool,
        depth: usize,
    ) -> Unwrapped {
        let key = (wrapper, stream.to_string());
        let joined = match self.pending.remove(&key) {
            Some(mut before) => {
                if before.len() + content.len() > MAX_LINE {
                    // Keep skipping this line's pieces up to its last.
                    if !last {
                        self.pending.insert(key, String::from("\u{0}too-long"));
                        return Unwrapped::Pending;
                    }
                    return Unwrapped::TooLong;
                }
                if before == "\u{0}too-long" {
                    if !last {
                        self.pending.insert(key, before);
                        return Unwrapped::Pending;
                    }
                    return Unwrapped::TooLong;
                }
                before.push_str(content);
                before
            }
            None => content.to_string(),
        };
        if last {
            self.unwrap(&joined, depth + 1)
        } else {
            self.pending.insert(key, joined);
            Unwrapped::Pending
        }
    }
}

/// A record as the collector writes it, its `type` first: read straight
/// into that type's struct. The record enum, tagged by `type`, buffers
/// every field before it knows its variant; this is a third faster on a
/// fleet's heartbeats. None for anything else (the general path reads it).
fn typed(text: &str) -> Option<Record> {
    use serde_json::from_str as read;
    let rest = text.strip_prefix("{\"type\":\"")?;
    let name = &rest[..rest.find('"')?];
    Some(match name {
        "start" => Record::Start(read(text).ok()?),
        "oom_kill" => Record::OomKill(read(text).ok()?),
        "late_exit" => Record::LateExit(read(text).ok()?),
        "signal_kill" => Record::SignalKill(read(text).ok()?),
        "container_exit" => Record::ContainerExit(read(text).ok()?),
        "oom_stall" => Record::OomStall(read(text).ok()?),
        "lost" => Record::Lost(read(text).ok()?),
        "heartbeat" => Record::Heartbeat(read(text).ok()?),
        "stop" => Record::Stop(read(text).ok()?),
        _ => return None,
    })
}

/// Whether a line that is not a record looks as if it meant to be one.
fn claims_record(text: &str) -> bool {
    text.starts_with("{\"type\"") || text.contains("\"schema\":")
}

/// `TIME STREAM TAG CONTENT` (the CRI log format): the stream, whether
/// the tag is `P` (partial), and the content.
fn cri(text: &str) -> Option<(&str, bool, &str)> {
    let mut parts = text.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("");
    let time_like = time.len() >= 20
        && time.as_bytes()[0].is_ascii_digit()
        && time.as_bytes().get(10) == Some(&b'T');
    if !time_like || !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    // The tag may carry more `:`-separated flags after P or F.
    let partial = match tag.split(':').next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some((stream, partial, content))
}

#[cfg(test)]
#[path = "unwrap_tests.rs"]
mod tests;
