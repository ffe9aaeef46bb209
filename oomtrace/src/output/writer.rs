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

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// No more lines will come.
    closed: bool,
    /// The output went away (EPIPE): nothing more can be written.
    gone: bool,
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
    fn push(&self, line: Vec<u8>, always: bool) -> bool {
        let mut state = self.lock();
        if state.gone || (!always && state.bytes + line.len() > self.capacity) {
            return false;
        }
        state.bytes += line.len();
        state.lines.push_back(line);
        self.ready.notify_one();
        true
    }

    /// The next line, waiting for one; None once closed and empty.
    fn pop(&self) -> Option<Vec<u8>> {
        let mut state = self.lock();
        loop {
            if let Some(line) = state.lines.pop_front() {
                state.bytes -= line.len();
                return Some(line);
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
    /// Starts the writer thread on `destination`. `on_closed` runs on that
    /// thread when the reader goes away (EPIPE).
    pub fn spawn(
        destination: Destination,
        capacity: usize,
        on_closed: impl FnOnce() + Send + 'static,
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
                    write_all(&queue, destination, on_closed);
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

fn write_all(queue: &Queue, mut destination: Destination, on_closed: impl FnOnce()) {
    let mut failing = false;
    while let Some(line) = queue.pop() {
        match destination.write_line(&line) {
            Ok(()) => {
                if failing {
                    log::warn!("writing output works again");
                    failing = false;
                }
            }
            Err(WriteError::Closed) => {
                let mut state = queue.lock();
                state.gone = true;
                queue
                    .dropped
                    .fetch_add(state.lines.len() as u64 + 1, Ordering::Relaxed);
                state.lines.clear();
                state.bytes = 0;
                drop(state);
                on_closed();
                return;
            }
            Err(error) => {
                // Say it once per episode; count every record it costs.
                if !failing {
                    log::error!("{error}; records are dropped (and counted) until it works again");
                    failing = true;
                }
                queue.dropped.fetch_add(1, Ordering::Relaxed);
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
        if self.queue.push(line, always) {
            return Delivery::Taken;
        }
        // A `lost` record that found no room is not a loss of its own: the
        // pipeline reports its counts again in the next one.
        if !matches!(record, Record::Lost(_)) {
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

    #[test]
    fn the_queue_is_bounded_in_bytes_except_for_start_and_stop() {
        let q = queue(10);
        assert!(q.push(vec![b'a'; 6], false));
        assert!(!q.push(vec![b'b'; 5], false), "over the bound");
        assert!(q.push(vec![b'c'; 4], false), "fits exactly");
        assert_eq!(q.pop().map(|l| l[0]), Some(b'a'));
        assert!(q.push(vec![b'd'; 1], false), "room again");
        assert!(q.push(vec![b's'; 50], true), "stop always fits");
        q.lock().closed = true;
        let rest: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|l| l[0]).collect();
        assert_eq!(rest, b"cds");
    }
}
