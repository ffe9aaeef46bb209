//! The pipeline: kernel events in, records out to any number of listeners.
//!
//! It runs on a thread of its own, fed through a bounded queue (the
//! [`Inbox`]) by the thread that drains the ring buffer, so that nothing it
//! does (converting, attributing, which may scan the kubelet's directories,
//! joining) ever holds up the draining. A full inbox drops the event and
//! counts it (`lost.events_dropped`), never silently.
//!
//! For each kernel record: [`convert`] makes the `oom_kill` record,
//! [`attribution`] names its container, pod and limit, [`join`] waits for
//! the victim's exit, and the listeners (the output, later metrics) get the
//! finished records. A tick every 100 ms writes the kills whose exit wait
//! is over, forgets victims past the retention horizon, and reports losses.

pub mod attribution;
pub mod convert;
pub mod join;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use oomtrace_record::{Counters, Origin, Record, Start, StopReason};

use self::{
    attribution::Attributor,
    convert::Loss,
    join::{JoinLimits, Joiner, Outcome},
};
use crate::kernel::{
    maps::{KernelCounters, VictimsMap},
    ring::KernelEvent,
};

/// How often kills past their exit wait are written and losses reported.
const TICK: Duration = Duration::from_millis(100);

/// Kernel events the inbox holds: a storm of this many kills read faster
/// than they are processed is absorbed, each a boxed 2 KiB kill record.
pub const INBOX_EVENTS: usize = 4096;

/// Takes a record from the pipeline. Called on the pipeline's thread, so it
/// must not block: a listener that does I/O queues the record and does the
/// I/O elsewhere.
pub trait Listener: Send {
    /// Takes one record. `Dropped` when it had no room; it counts the drop
    /// itself, except for `lost` records, which the pipeline retries.
    fn record(&mut self, record: &Record) -> Delivery;
    /// Records dropped so far (reported as `records_dropped`).
    fn dropped(&self) -> u64 {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    Dropped,
}

/// How the pipeline runs.
pub struct Settings {
    pub origin: Origin,
    pub page_size: u64,
    /// Where the node's root filesystem is, for the kubelet's directories.
    pub host_root: PathBuf,
    pub limits: JoinLimits,
}

/// The sending end of the pipeline's queue, for the ring-draining thread.
#[derive(Clone)]
pub struct Inbox {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Inbox {
    /// Queues one kernel event without waiting: a full queue drops it, and
    /// the drop is counted.
    pub fn push(&self, event: KernelEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(Message::Kernel(event))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Message {
    Kernel(KernelEvent),
    Stop(StopReason),
}

/// A running pipeline.
pub struct Pipeline {
    inbox: Inbox,
    waiting: Arc<AtomicUsize>,
    thread: JoinHandle<Counters>,
}

impl Pipeline {
    /// Starts the pipeline's thread. `start` goes to the listeners first.
    pub fn spawn(
        settings: Settings,
        victims: VictimsMap,
        kernel_counters: KernelCounters,
        listeners: Vec<Box<dyn Listener>>,
        start: Start,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(INBOX_EVENTS);
        let dropped = Arc::new(AtomicU64::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let Settings {
            origin,
            page_size,
            host_root,
            limits,
        } = settings;
        let mut worker = Worker {
            joiner: Joiner::new(limits, origin.clone()),
            attributor: Attributor::new(&host_root, page_size),
            origin,
            page_size,
            victims,
            kernel_counters,
            listeners,
            counters: Counters::default(),
            reported: Loss::default(),
            events_dropped: Arc::clone(&dropped),
            waiting: Arc::clone(&waiting),
        };
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                worker.broadcast(&Record::Start(Box::new(start)));
                worker.run(receiver)
            })?;
        Ok(Self {
            inbox: Inbox { sender, dropped },
            waiting,
            thread,
        })
    }

    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// Kills waiting for their victims' exits (as of the last event handled).
    pub fn waiting_for_exits(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Ends the pipeline: every kill still waiting is written without its
    /// exit, losses are reported, and `stop` is the last record. Returns the
    /// final counters.
    pub fn finish(self, reason: StopReason) -> Counters {
        // Blocking send: the stop must not be dropped like an event.
        let _ = self.inbox.sender.send(Message::Stop(reason));
        self.thread.join().unwrap_or_else(|_| {
            log::error!("the pipeline thread panicked; its counters are lost");
            Counters::default()
        })
    }
}

/// The pipeline thread's state.
struct Worker {
    origin: Origin,
    page_size: u64,
    joiner: Joiner,
    attributor: Attributor,
    victims: VictimsMap,
    kernel_counters: KernelCounters,
    listeners: Vec<Box<dyn Listener>>,
    counters: Counters,
    /// Loss totals already reported in `lost` records.
    reported: Loss,
    events_dropped: Arc<AtomicU64>,
    waiting: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self, inbox: Receiver<Message>) -> Counters {
        let mut next_tick = Instant::now() + TICK;
        let reason = loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(timeout) {
                Ok(Message::Kernel(event)) => self.handle(event),
                Ok(Message::Stop(reason)) => break reason,
                Err(RecvTimeoutError::Timeout) => {}
                // The collector went away without a stop: end as on SIGTERM.
                Err(RecvTimeoutError::Disconnected) => break StopReason::Sigterm,
            }
            let now = Instant::now();
            if now >= next_tick {
                let outcomes = self.joiner.tick(now);
                self.carry_out(outcomes);
                self.report_loss();
                next_tick = now + TICK;
            }
            self.waiting.store(self.joiner.waiting(), Ordering::Relaxed);
        };
        // Whatever is still queued was read from the kernel before the stop.
        while let Ok(Message::Kernel(event)) = inbox.try_recv() {
            self.handle(event);
        }
        let outcomes = self.joiner.finish(Instant::now());
        self.carry_out(outcomes);
        self.report_loss();
        let stop = convert::stop(&self.origin, reason, self.counters.clone());
        self.broadcast(&Record::Stop(Box::new(stop)));
        self.counters
    }

    fn handle(&mut self, event: KernelEvent) {
        let now = Instant::now();
        let outcomes = match event {
            KernelEvent::Kill(rec) => {
                let (mut kill, tracking) = convert::kill(&rec, &self.origin, self.page_size);
                self.attributor.attribute(&mut kill);
                self.joiner.add_kill(kill, tracking, now)
            }
            KernelEvent::Exit(exit) => self.joiner.add_exit(&exit),
        };
        self.carry_out(outcomes);
    }

    fn carry_out(&mut self, outcomes: Vec<Outcome>) {
        for outcome in outcomes {
            match outcome {
                Outcome::Kill(kill) => {
                    self.counters.kills += 1;
                    if kill.exit.observed {
                        self.counters.exits_observed += 1;
                    }
                    self.broadcast(&Record::OomKill(kill));
                }
                Outcome::LateExit(late) => {
                    self.counters.late_exits += 1;
                    self.broadcast(&Record::LateExit(late));
                }
                Outcome::Forget { seq, key } => {
                    self.counters.exits_never_seen += 1;
                    if let Some(key) = key {
                        self.victims.release(key, seq);
                    }
                }
            }
        }
    }

    /// Sends a record to every listener; true when every one took it.
    fn broadcast(&mut self, record: &Record) -> bool {
        let mut taken = true;
        for listener in &mut self.listeners {
            taken &= listener.record(record) == Delivery::Taken;
        }
        taken
    }

    /// Writes a `lost` record when any loss counter moved since the last one
    /// that was delivered.
    fn report_loss(&mut self) {
        let Some(kernel) = self.kernel_counters.loss() else {
            return;
        };
        let now = Loss {
            kernel,
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            records_dropped: self.listeners.iter().map(|l| l.dropped()).sum(),
        };
        let Some(lost) = convert::lost(&self.origin, now, self.reported) else {
            return;
        };
        if self.broadcast(&Record::Lost(Box::new(lost))) {
            self.reported = now;
        }
        let c = &mut self.counters;
        c.lost_kills = now.kernel.kills;
        c.lost_exits = now.kernel.exits;
        c.untracked_victims = now.kernel.untracked_victims;
        c.events_dropped = now.events_dropped;
        c.records_dropped = now.records_dropped;
    }
}
