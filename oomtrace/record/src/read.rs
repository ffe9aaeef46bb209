//! Reading records back from NDJSON, as the collector wrote them.
//!
//! Every line is read on its own: a line that is not a record is an error
//! for that line (with its number), and the next line is read as usual.
//! Unknown fields, record types and enum values are read, not rejected (see
//! the crate docs). Empty lines are skipped.

use std::io::BufRead;

use crate::Record;

/// Each variant prints its cause in its own message, and marks none as
/// `#[source]`: a reporter that prints the chain (anyhow's `{:#}`) would
/// print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading line {line}: {error}")]
    Io { line: u64, error: std::io::Error },
    #[error("line {line} is not an oomtrace record: {error}")]
    Json { line: u64, error: serde_json::Error },
}

/// Parses one line.
pub fn parse_line(line: &str) -> Result<Record, serde_json::Error> {
    serde_json::from_str(line)
}

/// The records of an NDJSON stream, one `Result` per non-empty line.
pub fn records<R: BufRead>(input: R) -> Records<R> {
    Records {
        input,
        line: 0,
        buf: String::new(),
    }
}

pub struct Records<R> {
    input: R,
    line: u64,
    buf: String,
}

impl<R: BufRead> Iterator for Records<R> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(Err(ReadError::Io { line, error })),
            }
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            return Some(parse_line(text).map_err(|error| ReadError::Json { line, error }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `stop` record exactly as the collector wrote it before `hostname`,
    /// `boot_id`, `run_id` and the later counters existed.
    const OLD_STOP: &str = r#"{"type":"stop","schema":1,"time":"2026-11-22T15:24:09Z","boot_ns":5,"reason":"SIGTERM","counters":{"kills":1,"exits_observed":1,"lost_kills":0,"lost_exits":0,"untracked_victims":0}}"#;

    #[test]
    fn old_records_new_records_and_garbage() {
        let input = format!(
            "{OLD_STOP}\n\n{}\nnot json\n{}\n",
            r#"{"type":"from_the_future","schema":2,"x":1}"#,
            r#"{"type":"lost","schema":1,"hostname":"n1","boot_id":"b","run_id":"r","time":"t","boot_ns":1,"kills":2,"exits":0,"untracked_victims":0,"events_dropped":0,"records_dropped":0,"new_counter":7}"#,
        );
        let read: Vec<Result<Record, ReadError>> = records(input.as_bytes()).collect();
        assert_eq!(read.len(), 4, "{read:?}");
        match &read[0] {
            Ok(Record::Stop(stop)) => {
                assert_eq!(stop.counters.kills, 1);
                assert_eq!(stop.counters.late_exits, 0);
                assert_eq!(stop.origin.run_id, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read[1], Ok(Record::Unknown)), "{:?}", read[1]);
        match &read[2] {
            Err(ReadError::Json { line, .. }) => assert_eq!(*line, 4),
            other => panic!("{other:?}"),
        }
        match &read[3] {
            Ok(Record::Lost(lost)) => {
                assert_eq!(lost.kills, 2);
                assert_eq!(lost.origin.hostname.as_deref(), Some("n1"));
            }
            other => panic!("{other:?}"),
        }
    }
}
