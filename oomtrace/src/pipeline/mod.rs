//! The pipeline: kernel events in, records out to any number of listeners.
//!
//! It runs on a thread of its own, fed through a bounded queue (the
//! [`Inbox`]) by the thread that drains the ring buffer, so that nothing it
//! does (converting, attributing, which may scan the kubelet's directories,
//! joining) ever holds up the draining. A full inbox drops the event and
//! counts it (`lost.events_dropped`), never silently.
//!
//! For each kernel record: [`convert`] makes the `oom_kill` (or
//! `signal_kill`) record, [`join`] waits for the victim's exit and for the
//! kernel's log line about the kill ([`kernel_log`]), [`attribution`] names
//! its container, pod and limit, and the listeners (the output, later
//! metrics) get the finished records. A container PID 1's exit becomes a
//! `container_exit` record, its cause settled by [`containers`]. A tick every 100 ms writes the kills whose exit wait
//! is over, forgets victims past the retention horizon, and reports losses.

pub mod attribution;
pub mod containers;
pub mod convert;
pub mod join;
pub mod kernel_log;
pub mod sampler;

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

use oomtrace_ebpf::{SOURCE_CONTAINER_EXIT, SOURCE_SIGNAL};
use oomtrace_record::{
    ContainerExit, Counters, KernelLog, Origin, Record, StallPhase, Start, StopReason,
};

use self::{
    attribution::{Attributor, HostView},
    containers::Containers,
    convert::Loss,
    join::{Held, JoinLimits, Joiner, Outcome, Tracking},
    kernel_log::{KernelLines, LINE_WAIT},
    sampler::MemoryView,
};
use crate::kernel::{
    kmsg::KilledLine,
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
    /// Called at every tick (every 100 ms, kills or not) with the totals
    /// so far: the pipeline is alive, and this is where it stands.
    fn tick(&mut self, _counters: &Counters) {}
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
    /// Whether the kernel's log lines are read (and so awaited for each kill).
    pub kernel_log: bool,
    /// The host's pid namespace and cgroup root, for attribution.
    pub host: HostView,
    /// Whether the signal hook is attached (`oom.killed` is known).
    pub signal_hook: bool,
    /// The memory sampler's samples, for `oom_kill.memory`; None when
    /// sampling is off.
    pub memory: Option<MemoryView>,
    /// How often a `heartbeat` record is written; None: never.
    pub heartbeat: Option<Duration>,
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

    /// Queues the kernel log's line about a kill, waiting for room (the log
    /// reader has a thread of its own to block). False once the pipeline
    /// has ended.
    pub fn push_kernel_line(&self, line: KilledLine) -> bool {
        self.sender.send(Message::KernelLine(line)).is_ok()
    }
}

enum Message {
    Kernel(KernelEvent),
    KernelLine(KilledLine),
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
            kernel_log,
            host,
            signal_hook,
            memory,
            heartbeat,
        } = settings;
        let line_wait = LINE_WAIT.min(limits.exit_wait);
        let host_pid_ns = host.pid_ns;
        let mut worker = Worker {
            joiner: Joiner::new(limits, origin.clone()),
            attributor: Attributor::new(&host_root, page_size, host),
            lines: KernelLines::new(kernel_log),
            containers: Containers::new(origin.clone(), start.time.clone()),
            host_pid_ns,
            signal_hook,
            memory,
            heartbeat,
            next_heartbeat: heartbeat.map(|h| Instant::now() + h),
            line_wait,
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
    lines: KernelLines,
    containers: Containers,
    /// The host's pid namespace (`start.host.pid_ns`).
    host_pid_ns: Option<u64>,
    signal_hook: bool,
    memory: Option<MemoryView>,
    heartbeat: Option<Duration>,
    next_heartbeat: Option<Instant>,
    /// How long a kill waits for its kernel log line.
    line_wait: Duration,
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
                Ok(Message::KernelLine(line)) => self.handle_line(line),
                Ok(Message::Stop(reason)) => break reason,
                Err(RecvTimeoutError::Timeout) => {}
                // The collector went away without a stop: end as on SIGTERM.
                Err(RecvTimeoutError::Disconnected) => break StopReason::Sigterm,
            }
            let now = Instant::now();
            if now >= next_tick {
                let outcomes = self.joiner.tick(now);
                self.carry_out(outcomes);
                let exits = self.containers.tick(now);
                self.write_container_exits(exits);
                self.write_stalls();
                self.report_loss();
                self.heartbeat(now);
                for listener in &mut self.listeners {
                    listener.tick(&self.counters);
                }
                next_tick = now + TICK;
            }
            self.waiting.store(self.joiner.waiting(), Ordering::Relaxed);
        };
        // Whatever is still queued was read from the kernel before the stop.
        while let Ok(message) = inbox.try_recv() {
            match message {
                Message::Kernel(event) => self.handle(event),
                Message::KernelLine(line) => self.handle_line(line),
                Message::Stop(_) => {}
            }
        }
        let outcomes = self.joiner.finish(Instant::now());
        self.carry_out(outcomes);
        let exits = self.containers.finish();
        self.write_container_exits(exits);
        self.write_stalls();
        self.report_loss();
        if let Some(memory) = &self.memory {
            (
                self.counters.sampler_evictions,
                self.counters.sampler_refusals,
            ) = memory.cap_counts();
        }
        let stop = convert::stop(&self.origin, reason, self.counters.clone());
        self.broadcast(&Record::Stop(Box::new(stop)));
        self.counters
    }

    fn handle(&mut self, event: KernelEvent) {
        let now = Instant::now();
        let outcomes = match event {
            KernelEvent::Kill(rec) if rec.rec.source == SOURCE_SIGNAL => {
                let (mut kill, tracking) = convert::signal_kill(&rec, &self.origin, self.page_size);
                self.attributor.attribute_signal(&mut kill);
                let exits = self.containers.note_signal(&kill);
                self.write_container_exits(exits);
                self.joiner.add_signal_kill(kill, tracking, now)
            }
            KernelEvent::Kill(rec) if rec.rec.source == SOURCE_CONTAINER_EXIT => {
                let (mut exit, exit_of) = convert::container_exit(&rec, &self.origin);
                self.attributor.attribute_container_exit(&mut exit);
                let done = self.containers.exited(exit, exit_of, now);
                self.write_container_exits(done.into_iter().collect());
                Vec::new()
            }
            KernelEvent::Kill(rec) => {
                let (mut kill, tracking) =
                    convert::kill(&rec, &self.origin, self.page_size, self.signal_hook);
                // Marked without a kill because a SIGKILL was already killing
                // it: the kernel registered that signal kill for this process.
                if kill.oom.killed == Some(false)
                    && let Tracking::SameAs(seq) = tracking
                    && self.containers.is_signal_kill(seq)
                {
                    kill.oom.signal_kill_seq = Some(seq);
                }
                self.attributor
                    .fired_memcg(&mut kill, convert::shared_memcg_levels(&rec));
                let exits = self.containers.note_oom(&kill);
                self.write_container_exits(exits);
                let mut line_until = self
                    .lines
                    .meet_kill(&mut kill, now)
                    .then(|| now + self.line_wait);
                if line_until.is_some() && kill.oom.killed == Some(false) {
                    // oom_kill_process() and out_of_memory() log nothing
                    // when they only mark a task that is already dying.
                    kill.oom.kernel_log = Some(KernelLog::Missing);
                    line_until = None;
                }
                self.joiner.add_kill(kill, tracking, now, line_until)
            }
            KernelEvent::Exit(exit) => self.joiner.add_exit(&exit),
        };
        self.carry_out(outcomes);
    }

    fn write_container_exits(&mut self, exits: Vec<ContainerExit>) {
        for exit in exits {
            self.counters.container_exits += 1;
            self.broadcast(&Record::ContainerExit(Box::new(exit)));
        }
    }

    /// Writes the `oom_stall` records the sampler made since the last tick.
    fn write_stalls(&mut self) {
        let Some(memory) = &self.memory else {
            return;
        };
        for mut stall in memory.take_stalls() {
            stall.origin = self.origin.clone();
            self.attributor.attribute_stall(&mut stall);
            if stall.phase == StallPhase::Start {
                self.counters.oom_stalls += 1;
            }
            self.broadcast(&Record::OomStall(Box::new(stall)));
        }
    }

    fn handle_line(&mut self, line: KilledLine) {
        let mut outcomes = Vec::new();
        let settle = |kill: &mut oomtrace_record::OomKill| kernel_log::settle(kill, &line);
        if !self.joiner.settle_line(line.tid, settle, &mut outcomes) {
            self.lines.keep(line, Instant::now());
        }
        self.carry_out(outcomes);
    }

    fn carry_out(&mut self, outcomes: Vec<Outcome>) {
        for outcome in outcomes {
            match outcome {
                Outcome::Kill(Held::Oom(mut kill)) => {
                    self.attributor.attribute(&mut kill);
                    // Once the kill is complete: one lookup under the
                    // sampler's lock, no I/O.
                    kill.memory = self.memory.as_ref().and_then(|m| m.memory_of(&kill));
                    let ended = self.containers.host_oom_kill(&kill, self.host_pid_ns);
                    self.counters.kills += 1;
                    if kill.exit.observed {
                        self.counters.exits_observed += 1;
                    }
                    self.broadcast(&Record::OomKill(kill));
                    self.write_container_exits(ended.into_iter().collect());
                }
                Outcome::Kill(Held::Signal(mut kill)) => {
                    self.attributor.signal_released(&mut kill);
                    let ended = self.containers.host_signal_kill(&kill, self.host_pid_ns);
                    self.counters.signal_kills += 1;
                    self.broadcast(&Record::SignalKill(kill));
                    self.write_container_exits(ended.into_iter().collect());
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

    /// Writes a `heartbeat` record when one is due.
    fn heartbeat(&mut self, now: Instant) {
        let (Some(interval), Some(due)) = (self.heartbeat, self.next_heartbeat) else {
            return;
        };
        if now < due {
            return;
        }
        self.next_heartbeat = Some(now + interval);
        if let Some(memory) = &self.memory {
            (
                self.counters.sampler_evictions,
                self.counters.sampler_refusals,
            ) = memory.cap_counts();
        }
        let beat = convert::heartbeat(&self.origin, interval, self.counters.clone());
        self.broadcast(&Record::Heartbeat(Box::new(beat)));
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
        c.lost_signal_kills = now.kernel.signal_kills;
    }
}
