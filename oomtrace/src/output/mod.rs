//! Where records go: encoded as NDJSON or text on the pipeline's thread,
//! then handed through a bounded queue to a writer thread of their own
//! ([`writer`]), so that a slow disk or a stalled reader never holds up the
//! pipeline, let alone the ring buffer.

mod destination;
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
        Format::Json => serde_json::to_vec(record)?,
        Format::Text => oomtrace_record::text::line(record).into_bytes(),
    };
    line.push(b'\n');
    Ok(line)
}
