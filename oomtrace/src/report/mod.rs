//! `oomtrace report`: the post-mortem, from whatever the log pipeline
//! kept. Streams every input (plain or gzip, wrapped or not), reads the
//! records through the record crate on every core ([`parallel`]), drops duplicates and what
//! the filters exclude, and builds the story ([`analysis`]), shown as text
//! ([`text`]) or as one JSON document ([`model`]).
//!
//! Bad input never stops the run: a malformed line is reported as
//! `file:line: reason` on stderr, skipped and counted, unless `--strict`.

mod advice;
mod analysis;
mod filter;
mod input;
pub mod model;
mod nodes;
mod parallel;
pub mod schema_doc;
mod subject;
pub mod svg;
pub mod text;
mod text_details;
mod unwrap;

use std::{io::Write, path::PathBuf, sync::Arc};

use oomtrace_record::SCHEMA_VERSION;

pub use self::filter::{Filters, parse_time};
use self::{
    analysis::Analysis,
    filter::Dedupe,
    model::Report,
    parallel::{Done, LineRead, Parsed, Reading},
    unwrap::Unwrapper,
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Input(#[from] input::InputError),
}

pub struct Options {
    pub inputs: Vec<PathBuf>,
    /// `--field`: the dotted path of the record in each JSON line.
    pub field: Option<String>,
    pub strict: bool,
    pub loop_count: u64,
    pub loop_window_s: f64,
    pub filters: Filters,
}

/// The analysis, and whether `--strict` stopped it at a bad line.
pub struct Outcome {
    pub report: Report,
    pub strict_failure: bool,
}

struct Reader<'a> {
    options: &'a Options,
    analysis: Analysis,
    dedupe: Dedupe,
    /// Where `file:line: reason` messages go.
    warnings: &'a mut dyn Write,
    warned_newer: bool,
    /// The source being applied.
    name: Arc<str>,
    /// Its pieces of split lines pending at the end of the chunk applied
    /// last.
    carried: Unwrapper,
}

/// The `--strict` stop.
struct Strict;

/// Reads every input and analyses it; messages about bad input go to
/// `warnings` (stderr).
pub fn run(options: &Options, warnings: &mut dyn Write) -> Result<Outcome, ReportError> {
    run_chunked(options, warnings, parallel::CHUNK_BYTES)
}

/// [`run`], in chunks of about `chunk_bytes` (tests cut them small).
fn run_chunked(
    options: &Options,
    warnings: &mut dyn Write,
    chunk_bytes: usize,
) -> Result<Outcome, ReportError> {
    let sources = input::expand(&options.inputs)?;
    let mut reader = Reader {
        options,
        analysis: Analysis::new(options.loop_count, options.loop_window_s),
        dedupe: Dedupe::default(),
        warnings,
        warned_newer: false,
        name: "-".into(),
        carried: Unwrapper::new(options.field.as_deref()),
    };
    let reading = Reading {
        field: options.field.as_deref(),
        filters: &options.filters,
    };
    let mut strict_failure = false;
    parallel::read(&sources, reading, chunk_bytes, |done| {
        let applied = reader.apply(done, reading);
        strict_failure = applied.is_err();
        applied.is_ok()
    });
    let report = reader.analysis.finish();
    Ok(Outcome {
        report,
        strict_failure,
    })
}

impl Reader<'_> {
    fn warn(&mut self, line: u64, reason: &str) {
        let _ = writeln!(self.warnings, "{}:{line}: {reason}", self.name);
    }

    /// A bad line: said, counted, and the end under `--strict`.
    fn bad(&mut self, line: u64, reason: &str) -> Result<(), Strict> {
        self.warn(line, reason);
        if self.options.strict {
            Err(Strict)
        } else {
            Ok(())
        }
    }

    /// Takes one piece of work, in input order.
    fn apply(&mut self, done: Done, reading: Reading<'_>) -> Result<(), Strict> {
        match done {
            Done::Start(name) => {
                self.analysis.report.input.sources += 1;
                self.name = name;
                self.carried = Unwrapper::new(self.options.field.as_deref());
                Ok(())
            }
            Done::OpenFailed(error) => {
                self.analysis.report.input.read_errors += 1;
                self.bad(0, &error)
            }
            Done::Lines {
                chunk,
                reads,
                unwrapper,
            } => {
                // The worker read the chunk with no pieces pending: exact
                // unless some were.
                let reads = if self.carried.unfinished() > 0 {
                    reading.chunk(&chunk, &mut self.carried)
                } else {
                    self.carried = unwrapper;
                    reads
                };
                for (line, read) in (chunk.first_line..).zip(reads) {
                    self.line(line, read)?;
                }
                Ok(())
            }
            Done::ReadFailed { line, error } => {
                self.analysis.report.input.read_errors += 1;
                let reason = format!("read error, the rest is not read: {error}");
                self.bad(line, &reason)
            }
            Done::End { line } => {
                if self.carried.unfinished() > 0 {
                    self.analysis.report.input.malformed += 1;
                    return self.bad(line, "ends inside a split line (its last piece is missing)");
                }
                Ok(())
            }
        }
    }

    fn line(&mut self, line: u64, read: LineRead) -> Result<(), Strict> {
        let input = &mut self.analysis.report.input;
        input.lines += 1;
        match read {
            LineRead::TooLong => {
                input.too_long += 1;
                self.bad(line, "longer than 1 MiB: skipped")
            }
            LineRead::NotUtf8 => {
                input.malformed += 1;
                self.bad(line, "not UTF-8 text (binary?)")
            }
            LineRead::Pending => Ok(()),
            LineRead::Other => {
                input.other_lines += 1;
                Ok(())
            }
            LineRead::JoinedTooLong => {
                input.too_long += 1;
                self.bad(line, "joined pieces longer than 1 MiB: skipped")
            }
            LineRead::Malformed(reason) => {
                input.malformed += 1;
                self.bad(line, &reason)
            }
            LineRead::NotRecord { schema, reason } => {
                input.records += 1;
                self.note_schema(line, schema);
                self.analysis.report.input.malformed += 1;
                self.bad(line, &reason)
            }
            LineRead::UnknownType { kind, schema } => {
                input.records += 1;
                self.note_schema(line, schema);
                *self
                    .analysis
                    .report
                    .input
                    .unknown_types
                    .entry(kind)
                    .or_default() += 1;
                Ok(())
            }
            LineRead::Record(parsed) => {
                input.records += 1;
                self.note_schema(line, parsed.schema);
                self.known(*parsed);
                Ok(())
            }
        }
    }

    /// Counts a record of a newer schema version, warning at the first.
    fn note_schema(&mut self, line: u64, schema: u64) {
        if schema <= u64::from(SCHEMA_VERSION) {
            return;
        }
        self.analysis.report.input.newer_schema += 1;
        if !self.warned_newer {
            self.warned_newer = true;
            let reason = format!(
                "schema {schema} is newer than this oomtrace's ({SCHEMA_VERSION}): reading what it knows"
            );
            self.warn(line, &reason);
        }
    }

    /// A record of a known type: deduplicated, filtered, analysed.
    fn known(&mut self, parsed: Parsed) {
        let input = &mut self.analysis.report.input;
        if !self.dedupe.first(parsed.key) {
            input.duplicates += 1;
            return;
        }
        if !parsed.passes {
            input.filtered_out += 1;
            return;
        }
        *input
            .by_type
            .entry(parsed.record.type_name().to_string())
            .or_default() += 1;
        self.analysis.add(&parsed.record);
    }
}

/// The JSON Schema of `--json`'s document.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Report)).unwrap_or_default()
}

/// The field table of `--json`'s document, for docs/report.md.
pub fn json_schema_markdown() -> String {
    schema_doc::table(&json_schema())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "reader_props.rs"]
mod reader_props;
