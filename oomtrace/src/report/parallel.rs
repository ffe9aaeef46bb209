//! Reading on every core. One thread reads each source in turn (and
//! decompresses it: a gzip stream cannot be split) into newline-aligned
//! chunks of lines; worker threads take each line out of its wrappers and
//! parse its record, into a [`LineRead`] per line; the caller applies the
//! chunks in input order, so that the same input gives the same story
//! whatever the threads' timing.
//!
//! A piece of a split line (Docker's 16 KiB pieces, CRI `P` lines) joins
//! lines across a chunk's boundary. A worker starts each chunk with no
//! pieces pending, which is exact unless the chunk before ended inside a
//! split line: then the caller reads the chunk again itself, with the
//! pieces carried over. That is rare (a split line
//! cut by a chunk's end), and the result is the same as reading the
//! source line by line.
//!
//! Memory is bounded: at most [`IN_FLIGHT_PER_WORKER`] chunks per worker
//! (of about [`CHUNK_BYTES`] each, and their parsed records) exist at
//! once, queued, being parsed, or waiting for their turn.

use std::{
    collections::BTreeMap,
    io::BufRead,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
};

use oomtrace_record::{Record, read::parse_line};

use super::{
    filter::{Dedupe, Filters},
    input::{self, Line, MAX_LINE, Source},
    unwrap::{Unwrapped, Unwrapper},
};

/// A chunk's text, about (a chunk ends at the first line end past it).
pub const CHUNK_BYTES: usize = 256 << 10;
/// Chunks in existence at once, per worker.
const IN_FLIGHT_PER_WORKER: usize = 4;
/// Workers at most (a chunk's parse is the work; more cores than this
/// wait on the one reading thread).
const MAX_WORKERS: usize = 16;

/// Lines of one source, in order.
pub struct Chunk {
    /// The source's line number of the first line (from 1).
    pub first_line: u64,
    text: Vec<u8>,
    /// Each line's bytes in `text`; None for a line longer than
    /// [`MAX_LINE`] (read through and dropped).
    lines: Vec<Option<Range<usize>>>,
}

impl Chunk {
    fn new(first_line: u64, bytes: usize) -> Self {
        Self {
            first_line,
            text: Vec::with_capacity(bytes + (4 << 10)),
            lines: Vec::new(),
        }
    }
}

/// What a line held, as a worker read it.
#[derive(Debug)]
pub enum LineRead {
    /// Longer than [`MAX_LINE`].
    TooLong,
    NotUtf8,
    /// A piece of a split line; the rest is to come.
    Pending,
    /// Another program's line.
    Other,
    /// Pieces joined to more than [`MAX_LINE`].
    JoinedTooLong,
    /// Claims to be a record or a wrapper and is not: why.
    Malformed(String),
    /// A record whose fields do not read as its type: why.
    NotRecord {
        schema: u64,
        reason: String,
    },
    /// A record of a type this oomtrace does not know.
    UnknownType {
        kind: String,
        schema: u64,
    },
    Record(Box<Parsed>),
}

/// A record of a known type, with what could be worked out away from the
/// input order.
#[derive(Debug)]
pub struct Parsed {
    pub record: Record,
    pub schema: u64,
    /// Its identity for dedupe ([`Dedupe::key`]).
    pub key: Option<u64>,
    /// Whether it passes the filters.
    pub passes: bool,
}

/// What the reading thread sends, in input order.
enum Work {
    /// A source begins.
    Start(Arc<str>),
    OpenFailed(String),
    Lines(Chunk),
    /// A read error after the lines sent: the line it was reading.
    ReadFailed {
        line: u64,
        error: String,
    },
    /// The source ended; the line number after its last.
    End {
        line: u64,
    },
}

/// A piece of work done, for the caller to apply in order.
pub enum Done {
    Start(Arc<str>),
    OpenFailed(String),
    Lines {
        chunk: Chunk,
        reads: Vec<LineRead>,
        /// The pieces of split lines pending at the chunk's end, read
        /// from none pending at its start.
        unwrapper: Unwrapper,
    },
    ReadFailed {
        line: u64,
        error: String,
    },
    End {
        line: u64,
    },
}

/// What the workers need to read a line.
#[derive(Clone, Copy)]
pub struct Reading<'a> {
    pub field: Option<&'a str>,
    pub filters: &'a Filters,
}

impl Reading<'_> {
    /// Reads a chunk's lines, with the pieces pending in `unwrapper`.
    pub fn chunk(&self, chunk: &Chunk, unwrapper: &mut Unwrapper) -> Vec<LineRead> {
        chunk
            .lines
            .iter()
            .map(|span| match span {
                Some(range) => self.line(&chunk.text[range.clone()], unwrapper),
                None => LineRead::TooLong,
            })
            .collect()
    }

    fn line(&self, bytes: &[u8], unwrapper: &mut Unwrapper) -> LineRead {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return LineRead::NotUtf8;
        };
        match unwrapper.line(text) {
            Unwrapped::Record(text, value) => {
                let kind = value["type"].as_str().unwrap_or("?").to_string();
                let schema = value["schema"].as_u64().unwrap_or(0);
                match parse_line(&text) {
                    Ok(Record::Unknown) => LineRead::UnknownType { kind, schema },
                    Ok(record) => self.parsed(record, schema),
                    Err(error) => LineRead::NotRecord {
                        schema,
                        reason: format!("not an oomtrace `{kind}` record: {error}"),
                    },
                }
            }
            Unwrapped::Parsed(_, record) => {
                let schema = record.schema().map_or(0, u64::from);
                self.parsed(*record, schema)
            }
            Unwrapped::Pending => LineRead::Pending,
            Unwrapped::Other => LineRead::Other,
            Unwrapped::TooLong => LineRead::JoinedTooLong,
            Unwrapped::Malformed(reason) => LineRead::Malformed(reason),
        }
    }

    fn parsed(&self, record: Record, schema: u64) -> LineRead {
        LineRead::Record(Box::new(Parsed {
            key: Dedupe::key(&record),
            passes: self.filters.pass(&record),
            record,
            schema,
        }))
    }
}

/// Reads `sources` on every core, in chunks of about `chunk_bytes`, and
/// hands each piece of work to `apply` in input order; `apply` returns
/// false to stop reading.
pub fn read(
    sources: &[Source],
    reading: Reading<'_>,
    chunk_bytes: usize,
    mut apply: impl FnMut(Done) -> bool,
) {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS);
    let in_flight = workers * IN_FLIGHT_PER_WORKER;
    // A slot is taken for each piece of work sent and given back when it
    // has been applied: the bound on memory.
    let (slot_tx, slot_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = slot_tx.send(());
    }
    let (work_tx, work_rx) = sync_channel::<(u64, Work)>(in_flight);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<(u64, Done)>(in_flight);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || produce(sources, chunk_bytes, &slot_rx, &work_tx, stop));
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            scope.spawn(move || work(work_rx, &done_tx, reading));
        }
        drop(done_tx);
        let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        'apply: for (seq, done) in &done_rx {
            waiting.insert(seq, done);
            while let Some(done) = waiting.remove(&next) {
                next += 1;
                if !apply(done) {
                    break 'apply;
                }
                let _ = slot_tx.send(());
            }
        }
        // Stopping early: the reading thread sees the flag (or runs out of
        // slots), the workers run out of work.
        stop.store(true, Ordering::Relaxed);
        drop(slot_tx);
        drop(done_rx);
    });
}

/// The reading thread: every source, in order, as chunks of lines.
fn produce(
    sources: &[Source],
    chunk_bytes: usize,
    slots: &Receiver<()>,
    work: &SyncSender<(u64, Work)>,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    let mut send = |item: Work| -> bool {
        if stop.load(Ordering::Relaxed) || slots.recv().is_err() {
            return false;
        }
        let sent = work.send((seq, item)).is_ok();
        seq += 1;
        sent
    };
    for source in sources {
        if !send(Work::Start(source.name().into())) {
            return;
        }
        let mut input = match input::open(source) {
            Ok(input) => input,
            Err(error) => {
                if !send(Work::OpenFailed(error.to_string())) {
                    return;
                }
                continue;
            }
        };
        if !chunks(&mut *input, chunk_bytes, &mut send) {
            return;
        }
    }
}

/// One source's lines as chunks, then its end (or read error).
fn chunks(
    input: &mut dyn BufRead,
    chunk_bytes: usize,
    send: &mut impl FnMut(Work) -> bool,
) -> bool {
    let mut line = 1u64;
    let mut chunk = Chunk::new(line, chunk_bytes);
    loop {
        let start = chunk.text.len();
        match input::append_line(input, &mut chunk.text, MAX_LINE) {
            Ok(Line::Whole) => chunk.lines.push(Some(start..chunk.text.len())),
            Ok(Line::TooLong) => chunk.lines.push(None),
            Ok(Line::Eof) => {
                return (chunk.lines.is_empty() || send(Work::Lines(chunk)))
                    && send(Work::End { line });
            }
            Err(error) => {
                chunk.text.truncate(start);
                return (chunk.lines.is_empty() || send(Work::Lines(chunk)))
                    && send(Work::ReadFailed {
                        line,
                        error: error.to_string(),
                    });
            }
        }
        line += 1;
        if chunk.text.len() >= chunk_bytes {
            let full = std::mem::replace(&mut chunk, Chunk::new(line, chunk_bytes));
            if !send(Work::Lines(full)) {
                return false;
            }
        }
    }
}

/// A worker: reads chunks' lines; passes the rest on.
fn work(work: &Mutex<Receiver<(u64, Work)>>, done: &SyncSender<(u64, Done)>, reading: Reading<'_>) {
    loop {
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, item)) = next else {
            return;
        };
        let result = match item {
            Work::Start(name) => Done::Start(name),
            Work::OpenFailed(error) => Done::OpenFailed(error),
            Work::Lines(chunk) => {
                let mut unwrapper = Unwrapper::new(reading.field);
                let reads = reading.chunk(&chunk, &mut unwrapper);
                Done::Lines {
                    chunk,
                    reads,
                    unwrapper,
                }
            }
            Work::ReadFailed { line, error } => Done::ReadFailed { line, error },
            Work::End { line } => Done::End { line },
        };
        if done.send((seq, result)).is_err() {
            return;
        }
    }
}
