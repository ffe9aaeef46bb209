//! The output queue and its writer thread.
//!
//! The pipeline encodes each record and queues the line; the writer thread
//! writes lines in order, one whole line per write. The queue is bounded in
//! bytes ([`QUEUE_BYTES`]): while the output is blocked (a reader that
//! stopped reading, a slow disk) it holds what the output cannot take, and
//! beyond that it drops records and counts them (`records_dropped`). The
//! `start` and `stop` records are always queued, so a run is never without
//! its first and last line.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use oomtrace_record::Record;

use super::{Destination, Format, WriteError, encode};
use crate::pipeline::{Delivery, Listener};

/// Bytes of encoded records the queue holds while the output is blocked:
/// about 8,000 JSON kill records (2 KiB each with kubelet-length paths), a
/// storm's worth. Memory is taken only while lines wait.
pub const QUEUE_BYTES: usize = 16 << 20;

/// A queued line, and whether failing to write it is a dropped record:
/// not for a `lost` record, whose counts the stop record keeps (otherwise
/// a full disk would make every `lost` record report the one before it,
/// one loss more each time, for as long as it stays full).
struct Line {
    bytes: Vec<u8>,
    counts: bool,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Line>,
    bytes: usize,
    /// No more lines will come.
    closed: bool,
    /// The output went away (EPIPE): nothing more can be written.
    gone: bool,
    /// Reopen the output before the next line (SIGHUP).
    reopen: bool,
}

/// What the writer thread does next.
enum Next {
    Line(Line),
    Reopen,
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking holder leaves the queue's data consistent (every
        // change is one push or pop), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a line; `always` lines (start, stop) ignore the byte bound.
    fn push(&self, line: Line, always: bool) -> bool {
        let mut state = self.lock();
        if state.gone || (!always && state.bytes + line.bytes.len() > self.capacity) {
            return false;
        }
        state.bytes += line.bytes.len();
        state.lines.push_back(line);
        self.ready.notify_one();
        true
    }

    /// The next line or reopen request, waiting for one; None once closed
    /// and empty.
    fn pop(&self) -> Option<Next> {
        let mut state = self.lock();
        loop {
            if std::mem::take(&mut state.reopen) {
                return Some(Next::Reopen);
            }
            if let Some(line) = state.lines.pop_front() {
                state.bytes -= line.bytes.len();
                return Some(Next::Line(line));
            }
            if state.closed || state.gone {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// Why the output can take no more records, as the writer thread reports it.
#[derive(Debug)]
pub enum OutputEnd {
    /// The reader went away (EPIPE).
    ReaderGone,
    /// The very first line could not be written, with an error that does
    /// not pass (EIO, EBADF, ...): the destination cannot take records.
    Unwritable(String),
}

/// How the writer ended.
#[derive(Debug)]
pub enum Ended {
    /// Every queued line was written.
    Flushed,
    /// The reader went away.
    Closed,
    /// The output stayed blocked past the deadline; this many lines were not
    /// written.
    Blocked { unwritten: usize },
}

/// The writer thread.
pub struct Writer {
    queue: Arc<Queue>,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread on `destination`. `on_end` runs on that
    /// thread when the output can take no more records.
    pub fn spawn(
        destination: Destination,
        capacity: usize,
        on_end: impl FnOnce(OutputEnd) + Send + 'static,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let (done_tx, done) = mpsc::channel();
        let thread = {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || {
                    write_all(&queue, destination, on_end);
                    let _ = done_tx.send(());
                })?
        };
        Ok(Self {
            queue,
            done,
            thread,
        })
    }

    /// The pipeline's listener for this output.
    pub fn listener(&self, format: Format) -> OutputListener {
        OutputListener {
            queue: Arc::clone(&self.queue),
            format,
        }
    }

    /// Has the writer reopen its output before its next line (SIGHUP, after
    /// logrotate moved the file away).
    pub fn reopen(&self) {
        let mut state = self.queue.lock();
        state.reopen = true;
        self.queue.ready.notify_one();
    }

    /// Closes the queue and waits up to `deadline` for the writer to write
    /// what is left.
    pub fn finish(self, deadline: Duration) -> Ended {
        {
            let mut state = self.queue.lock();
            state.closed = true;
            self.queue.ready.notify_one();
        }
        if self.done.recv_timeout(deadline).is_err() {
            // Still blocked in a write: leave the thread to the process exit.
            return Ended::Blocked {
                unwritten: self.queue.lock().lines.len() + 1,
            };
        }
        let _ = self.thread.join();
        if self.queue.lock().gone {
            Ended::Closed
        } else {
            Ended::Flushed
        }
    }
}

/// After a write error is said, the same trouble coming back within this
/// long is only counted: a nearly full disk takes a short line now and then
/// and refuses the next long one, and that must not flood stderr.
const ERROR_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

fn write_all(queue: &Queue, mut destination: Destination, on_end: impl FnOnce(OutputEnd)) {
    let mut failing = false;
    let mut said_at: Option<std::time::Instant> = None;
    let mut first = true;
    while let Some(next) = queue.pop() {
        let line = match next {
            Next::Line(line) => line,
            Next::Reopen => {
                match destination.reopen() {
                    Ok(true) => log::info!("SIGHUP: reopened {}", destination.target()),
                    Ok(false) => log::info!("SIGHUP: records go to stdout; nothing to reopen"),
                    Err(e) => log::error!("SIGHUP: {e}; still writing to the file open before"),
                }
                continue;
            }
        };
        let result = destination.write_line(&line.bytes);
        let was_first = std::mem::take(&mut first);
        match result {
            Ok(()) => {
                if failing && said_at.is_some_and(|at| at.elapsed() >= ERROR_QUIET) {
                    log::warn!("writing {} works again", destination.target());
                }
                failing = false;
            }
            Err(error)
                if matches!(error, WriteError::Closed) || (was_first && !error.may_pass()) =>
            {
                let mut state = queue.lock();
                state.gone = true;
                queue
                    .dropped
                    .fetch_add(state.lines.len() as u64 + 1, Ordering::Relaxed);
                state.lines.clear();
                state.bytes = 0;
                drop(state);
                on_end(match error {
                    WriteError::Closed => OutputEnd::ReaderGone,
                    error => OutputEnd::Unwritable(error.to_string()),
                });
                return;
            }
            Err(error) => {
                // Say it once (again at most every ERROR_QUIET); count every
                // record it costs, and try each next line: space can come back.
                if !failing && said_at.is_none_or(|at| at.elapsed() >= ERROR_QUIET) {
                    log::error!(
                        "{error}; records that cannot be written are dropped and counted \
                         (stop.counters.records_dropped), and each next one is tried"
                    );
                    said_at = Some(std::time::Instant::now());
                }
                failing = true;
                if line.counts {
                    queue.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The pipeline's end of the queue: encodes records and queues them.
pub struct OutputListener {
    queue: Arc<Queue>,
    format: Format,
}

impl Listener for OutputListener {
    fn record(&mut self, record: &Record) -> Delivery {
        let line = match encode(record, self.format) {
            Ok(line) => line,
            Err(error) => {
                log::error!("encoding a {} record: {error}", record.type_name());
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
                return Delivery::Dropped;
            }
        };
        let always = matches!(record, Record::Start(_) | Record::Stop(_));
        let counts = !matches!(record, Record::Lost(_));
        let line = Line {
            bytes: line,
            counts,
        };
        if self.queue.push(line, always) {
            return Delivery::Taken;
        }
        // A `lost` record that found no room is not a loss of its own: the
        // pipeline reports its counts again in the next one.
        if counts {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Delivery::Dropped
    }

    fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    fn line(byte: u8, n: usize) -> Line {
        Line {
            bytes: vec![byte; n],
            counts: true,
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_except_for_start_and_stop() {
        let q = queue(10);
        assert!(q.push(line(b'a', 6), false));
        assert!(!q.push(line(b'b', 5), false), "over the bound");
        assert!(q.push(line(b'c', 4), false), "fits exactly");
        assert!(matches!(q.pop(), Some(Next::Line(l)) if l.bytes[0] == b'a'));
        assert!(q.push(line(b'd', 1), false), "room again");
        assert!(q.push(line(b's', 50), true), "stop always fits");
        q.lock().closed = true;
        q.lock().reopen = true;
        assert!(matches!(q.pop(), Some(Next::Reopen)), "a reopen goes first");
        let rest: Vec<u8> = std::iter::from_fn(|| match q.pop()? {
            Next::Line(l) => Some(l.bytes[0]),
            Next::Reopen => Some(b'r'),
        })
        .collect();
        assert_eq!(rest, b"cds");
    }
}
