//! `oomtrace report`: the post-mortem, from whatever the log pipeline
//! kept. Streams every input line by line (plain or gzip, wrapped or not),
//! reads the records through the record crate, drops duplicates and what
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
mod subject;
pub mod svg;
pub mod text;
mod text_details;
mod unwrap;

use std::{io::Write, path::PathBuf};

use oomtrace_record::{Record, SCHEMA_VERSION, read::parse_line};

pub use self::filter::{Filters, parse_time};
use self::{
    analysis::Analysis,
    filter::Dedupe,
    input::{Line, MAX_LINE, Source},
    model::Report,
    unwrap::{Unwrapped, Unwrapper},
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
}

/// The `--strict` stop.
struct Strict;

/// Reads every input and analyses it; messages about bad input go to
/// `warnings` (stderr).
pub fn run(options: &Options, warnings: &mut dyn Write) -> Result<Outcome, ReportError> {
    let sources = input::expand(&options.inputs)?;
    let mut reader = Reader {
        options,
        analysis: Analysis::new(options.loop_count, options.loop_window_s),
        dedupe: Dedupe::default(),
        warnings,
        warned_newer: false,
    };
    let mut strict_failure = false;
    for source in &sources {
        reader.analysis.report.input.sources += 1;
        if reader.source(source).is_err() {
            strict_failure = true;
            break;
        }
    }
    let report = reader.analysis.finish();
    Ok(Outcome {
        report,
        strict_failure,
    })
}

impl Reader<'_> {
    fn warn(&mut self, name: &str, line: u64, reason: &str) {
        let _ = writeln!(self.warnings, "{name}:{line}: {reason}");
    }

    /// A bad line: said, counted, and the end under `--strict`.
    fn bad(&mut self, name: &str, line: u64, reason: &str) -> Result<(), Strict> {
        self.warn(name, line, reason);
        if self.options.strict {
            Err(Strict)
        } else {
            Ok(())
        }
    }

    fn source(&mut self, source: &Source) -> Result<(), Strict> {
        let name = source.name();
        let mut input = match input::open(source) {
            Ok(input) => input,
            Err(error) => {
                self.analysis.report.input.read_errors += 1;
                return self.bad(&name, 0, &error.to_string());
            }
        };
        let mut unwrapper = Unwrapper::new(self.options.field.as_deref());
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            number += 1;
            match input::read_line(&mut *input, &mut buf, MAX_LINE) {
                Ok(Line::Eof) => break,
                Ok(Line::Whole) => {}
                Ok(Line::TooLong) => {
                    self.analysis.report.input.lines += 1;
                    self.analysis.report.input.too_long += 1;
                    self.bad(&name, number, "longer than 1 MiB: skipped")?;
                    continue;
                }
                Err(error) => {
                    self.analysis.report.input.read_errors += 1;
                    let reason = format!("read error, the rest is not read: {error}");
                    return self.bad(&name, number, &reason);
                }
            }
            self.analysis.report.input.lines += 1;
            let Ok(text) = std::str::from_utf8(&buf) else {
                self.analysis.report.input.malformed += 1;
                self.bad(&name, number, "not UTF-8 text (binary?)")?;
                continue;
            };
            match unwrapper.line(text) {
                Unwrapped::Record(text, value) => self.record(&name, number, &text, &value)?,
                Unwrapped::Parsed(_, record) => self.parsed(&name, number, *record),
                Unwrapped::Pending => {}
                Unwrapped::Other => self.analysis.report.input.other_lines += 1,
                Unwrapped::TooLong => {
                    self.analysis.report.input.too_long += 1;
                    self.bad(&name, number, "joined pieces longer than 1 MiB: skipped")?;
                }
                Unwrapped::Malformed(reason) => {
                    self.analysis.report.input.malformed += 1;
                    self.bad(&name, number, &reason)?;
                }
            }
        }
        if unwrapper.unfinished() > 0 {
            self.analysis.report.input.malformed += 1;
            self.bad(
                &name,
                number,
                "ends inside a split line (its last piece is missing)",
            )?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        name: &str,
        number: u64,
        text: &str,
        value: &serde_json::Value,
    ) -> Result<(), Strict> {
        self.analysis.report.input.records += 1;
        let kind = value["type"].as_str().unwrap_or("?").to_string();
        let schema = value["schema"].as_u64().unwrap_or(0);
        self.note_schema(name, number, schema);
        let record = match parse_line(text) {
            Ok(record) => record,
            Err(error) => {
                self.analysis.report.input.malformed += 1;
                let reason = format!("not an oomtrace `{kind}` record: {error}");
                return self.bad(name, number, &reason);
            }
        };
        if let Record::Unknown = record {
            *self
                .analysis
                .report
                .input
                .unknown_types
                .entry(kind)
                .or_default() += 1;
            return Ok(());
        }
        self.known(record);
        Ok(())
    }

    /// A record read straight into its type (see `Unwrapped::Parsed`).
    fn parsed(&mut self, name: &str, number: u64, record: Record) {
        self.analysis.report.input.records += 1;
        self.note_schema(name, number, record.schema().map_or(0, u64::from));
        self.known(record);
    }

    /// Counts a record of a newer schema version, warning at the first.
    fn note_schema(&mut self, name: &str, number: u64, schema: u64) {
        if schema <= u64::from(SCHEMA_VERSION) {
            return;
        }
        self.analysis.report.input.newer_schema += 1;
        if !self.warned_newer {
            self.warned_newer = true;
            let reason = format!(
                "schema {schema} is newer than this oomtrace's ({SCHEMA_VERSION}): reading what it knows"
            );
            self.warn(name, number, &reason);
        }
    }

    /// A record of a known type: deduplicated, filtered, analysed.
    fn known(&mut self, record: Record) {
        let input = &mut self.analysis.report.input;
        if !self.dedupe.first(&record) {
            input.duplicates += 1;
            return;
        }
        if !self.options.filters.pass(&record) {
            input.filtered_out += 1;
            return;
        }
        *input
            .by_type
            .entry(record.type_name().to_string())
            .or_default() += 1;
        self.analysis.add(&record);
    }
}

/// The JSON Schema of `--json`'s document.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Report)).unwrap_or_default()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
