//! `oomtrace run`: attach, then write one record per OOM kill until SIGINT or
//! SIGTERM (or until the reader of stdout goes away).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use oomtrace_ebpf::{SOURCE_TRACEPOINT, VictimEntry, counter, kill_valid};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::ProbeArgs;
use crate::{
    attribution::Attributor,
    clock,
    decode::{self, KernelRecord},
    enrich,
    host::{HostFacts, privileges},
    join::{Abandoned, Joiner},
    probes,
    schema::{CollectorStatus, Counters, Lost, Record, SCHEMA_VERSION, Stop},
    sink::{Format, Sink, SinkError},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Append records to FILE instead of writing them to stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `json`: one JSON object per line (NDJSON). `text`: one readable line
    /// per record.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// How long a kill waits for its victim's exit before it is written
    /// with `exit.observed = false` (e.g. 500ms, 2s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s", value_name = "DURATION")]
    pub exit_wait: Duration,
    /// oomtrace's own oom_score_adj. The default, -1000, keeps the OOM
    /// killer away from the recorder (needs CAP_SYS_RESOURCE; if refused,
    /// the start record says so and tracing goes on).
    #[arg(long, default_value_t = -1000, allow_negative_numbers = true, value_name = "N",
          value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub oom_score_adj: i32,
    /// oomtrace's own nice value. During a storm the CPUs are busy with the
    /// very processes being killed; the default, -10, lets the collector
    /// write each record within milliseconds of the exit (it needs a few
    /// ms of CPU per hundred kills, so it takes little from anyone). Needs
    /// CAP_SYS_NICE; if refused, the start record says so and tracing goes
    /// on. 0 leaves it alone.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true, value_name = "N",
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// Where the node's root filesystem is, for the kubelet's pod log
    /// directories (var/log/pods, var/log/containers) that give
    /// `k8s.namespace`, `k8s.pod` and `k8s.container`. In a DaemonSet that
    /// mounts the host at /host, pass `--host-root /host`.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub host_root: PathBuf,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// How many kills may wait for their exits at once; beyond it the oldest
    /// is written without its exit.
    #[arg(long, hide = true, default_value_t = 4096)]
    pub max_pending: usize,
}

/// How often loss counters and exit deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// At shutdown, how long pending kills may still wait for their exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    privileges::check()?;
    // Open the output first: a typo in --output should fail before attaching.
    let sink = match &args.output {
        Some(path) => Sink::file(path, args.format)
            .with_context(|| format!("cannot open --output {}", path.display()))?,
        None => Sink::stdout(args.format),
    };
    let oom_score_adj = super::protect_self(args.oom_score_adj);
    let mut notes = Vec::new();
    if let Some(error) = &oom_score_adj.error {
        log::warn!("{error}; continuing");
        notes.push(format!(
            "{error}; the collector is as killable as any process"
        ));
    }
    let nice = super::prioritize_self(args.nice);
    if let Some(error) = &nice.error {
        log::warn!("{error}; continuing");
        notes.push(format!(
            "{error}; records may be late while the CPUs are busy"
        ));
    }
    super::raise_memlock_limit();

    let host = HostFacts::gather();
    let options = args.probes.options();
    let tracer = probes::attach(&options, &host)?;
    for note in &tracer.notes {
        log::info!("{note}");
    }
    let collector = CollectorStatus {
        pid: std::process::id(),
        exit_wait_ms: args.exit_wait.as_millis() as u64,
        oom_score_adj,
        nice,
    };
    let start = super::start_record(host.clone(), &tracer, collector, notes);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(event_loop(tracer, sink, start, &args, host.page_size))
}

/// The collector's state between kernel records.
struct Collector {
    sink: Sink,
    joiner: Joiner,
    victims: BpfHashMap<MapData, u32, VictimEntry>,
    counters_map: Array<MapData, u64>,
    counters: Counters,
    page_size: u64,
    attributor: Attributor,
}

async fn event_loop(
    tracer: probes::Tracer,
    sink: Sink,
    start: crate::schema::Start,
    args: &RunArgs,
    page_size: u64,
) -> anyhow::Result<()> {
    let probes::Tracer {
        mut ebpf,
        events,
        victims,
        counters,
        ..
    } = tracer;
    let mut events = watch(events).context("watching the ring buffer")?;
    // The programs' own diagnostics (failed kernel reads and the like), at
    // debug level; never event data.
    let mut ebpf_log = if log::log_enabled!(log::Level::Debug) {
        aya_log::EbpfLogger::init(&mut ebpf)
            .ok()
            .and_then(|logger| watch(logger).ok())
    } else {
        None
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut collector = Collector {
        sink,
        joiner: Joiner::new(args.exit_wait, args.max_pending),
        victims,
        counters_map: counters,
        counters: Counters::default(),
        page_size,
        attributor: Attributor::new(&args.host_root, page_size),
    };
    // The ready signal: every probe is attached or has definitively failed.
    if let Err(e) = collector.sink.write(&Record::Start(Box::new(start))) {
        return quiet_if_closed(e);
    }

    let reason = loop {
        let step = tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = collector.drain(guard.get_inner_mut());
                guard.clear_ready();
                drained
            }
            _ = tick.tick() => collector.housekeeping(Instant::now()),
            Some(()) = flush_ebpf_log(&mut ebpf_log) => Ok(()),
        };
        if let Err(e) = step {
            return quiet_if_closed(e);
        }
    };
    log::info!("{reason}: flushing");

    // Shutdown: read what the kernel has queued, give pending kills a short
    // grace for their exits, then write the rest without them.
    let grace_end = Instant::now() + SHUTDOWN_GRACE.min(args.exit_wait);
    let shutdown = async {
        collector.drain(events.get_mut())?;
        while collector.joiner.len() > 0 && Instant::now() < grace_end {
            tokio::select! {
                guard = events.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        collector.drain(guard.get_inner_mut())?;
                        guard.clear_ready();
                    }
                }
                _ = tokio::time::sleep_until(grace_end.into()) => {}
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        for abandoned in collector.joiner.drain() {
            collector.abandon(abandoned)?;
        }
        collector.report_lost()?;
        let boot_ns = clock::boot_ns();
        collector.sink.write(&Record::Stop(Stop {
            schema: SCHEMA_VERSION,
            time: clock::rfc3339_from_boot_ns(boot_ns),
            boot_ns,
            reason: reason.into(),
            counters: collector.counters.clone(),
        }))
    };
    match shutdown.await {
        Ok(()) => Ok(()),
        Err(e) => quiet_if_closed(e),
    }
}

/// Registers a map's fd with the event loop for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a ring buffer map or the log map) and keeps
    // it open and unchanged for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// A reader that went away ends the run quietly (`oomtrace run | head -1`);
/// any other output error is an error.
fn quiet_if_closed(error: SinkError) -> anyhow::Result<()> {
    match error {
        SinkError::Closed => {
            log::info!("output closed; stopping");
            Ok(())
        }
        other => Err(other.into()),
    }
}

async fn flush_ebpf_log(
    logger: &mut Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
) -> Option<()> {
    let logger = logger.as_mut()?;
    let mut guard = logger.readable_mut().await.ok()?;
    guard.get_inner_mut().flush();
    guard.clear_ready();
    Some(())
}

impl Collector {
    /// Reads every record the kernel has queued.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), SinkError> {
        while let Some(item) = ring.next() {
            let decoded = decode::decode(&item);
            drop(item);
            match decoded {
                Ok(KernelRecord::Kill(rec)) => self.on_kill(&rec)?,
                Ok(KernelRecord::Exit(exit)) => {
                    if let Some(kill) = self.joiner.add_exit(&exit) {
                        self.emit(kill)?;
                    }
                }
                Err(e) => log::warn!("skipping a ring buffer record: {e}"),
            }
        }
        Ok(())
    }

    fn on_kill(&mut self, rec: &oomtrace_ebpf::KillRecord) -> Result<(), SinkError> {
        let mut kill = enrich::oom_kill(rec, self.page_size);
        self.attributor.attribute(&mut kill);
        if rec.valid & kill_valid::EXIT_UNTRACKED != 0 {
            // The kernel could not register the victim: no exit will come.
            return self.emit(kill);
        }
        // The key the kernel used in VICTIMS (see Config::exit_key_is_tid).
        let key = if rec.source == SOURCE_TRACEPOINT {
            rec.victim_tid
        } else {
            rec.victim_tgid
        };
        for evicted in self.joiner.add_kill(kill, Some(key), Instant::now()) {
            self.abandon(evicted)?;
        }
        Ok(())
    }

    fn housekeeping(&mut self, now: Instant) -> Result<(), SinkError> {
        for abandoned in self.joiner.expire(now) {
            self.abandon(abandoned)?;
        }
        self.report_lost()
    }

    /// Writes a kill whose exit will not be joined, and stops the kernel
    /// from waiting for it.
    fn abandon(&mut self, abandoned: Abandoned) -> Result<(), SinkError> {
        if let Some(key) = abandoned.key {
            // Only remove the entry if it is still this kill's (a reused pid
            // may have registered a newer one).
            if self
                .victims
                .get(&key, 0)
                .is_ok_and(|entry| entry.kill_seq == abandoned.kill.seq)
            {
                let _ = self.victims.remove(&key);
            }
        }
        self.emit(abandoned.kill)
    }

    fn emit(&mut self, kill: crate::schema::OomKill) -> Result<(), SinkError> {
        self.counters.kills += 1;
        if kill.exit.observed {
            self.counters.exits_observed += 1;
        }
        self.sink.write(&Record::OomKill(Box::new(kill)))
    }

    /// Emits a `lost` record when the kernel's loss counters moved.
    fn report_lost(&mut self) -> Result<(), SinkError> {
        let read = |index| self.counters_map.get(&index, 0).unwrap_or(0);
        let (kills, exits, untracked) = (
            read(counter::LOST_KILLS),
            read(counter::LOST_EXITS),
            read(counter::VICTIMS_FULL),
        );
        let c = &self.counters;
        if (kills, exits, untracked) == (c.lost_kills, c.lost_exits, c.untracked_victims) {
            return Ok(());
        }
        let boot_ns = clock::boot_ns();
        let lost = Lost {
            schema: SCHEMA_VERSION,
            time: clock::rfc3339_from_boot_ns(boot_ns),
            boot_ns,
            kills: kills - c.lost_kills,
            exits: exits - c.lost_exits,
            untracked_victims: untracked - c.untracked_victims,
        };
        self.counters.lost_kills = kills;
        self.counters.lost_exits = exits;
        self.counters.untracked_victims = untracked;
        self.sink.write(&Record::Lost(lost))
    }
}
