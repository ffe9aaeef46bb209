//! `oomtrace run`: attach, then write one record per OOM kill until a stop
//! signal (or until the reader of stdout goes away).
//!
//! Three threads: this one drains the ring buffer into the pipeline's inbox
//! and waits for signals; the pipeline's converts, attributes and joins; the
//! writer's writes. Each hands over through a bounded, counted queue.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use oomtrace_record::{CollectorStatus, KernelLogStatus, StopReason};
use tokio::{
    io::unix::AsyncFd,
    sync::{Notify, mpsc},
};

use super::{ProbeArgs, signals::listen_for_signals};
use crate::{
    kernel::{attach, host, kmsg, ring},
    output::{
        Destination, Format,
        metrics::{self, Metrics, server::MetricsServer},
        writer::{Ended, OutputEnd, QUEUE_BYTES, Writer},
    },
    pipeline::{
        Pipeline, Settings,
        attribution::{
            CONTAINERD_ROOT, CONTAINERS_STORAGE_ROOT, DOCKER_ROOT, HostView, RuntimeRoots,
        },
        convert,
        join::JoinLimits,
        sampler::{Sampler, SamplerConfig, Version as SampleVersion},
    },
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
    /// with `exit.observed = false` (e.g. 500ms, 2s). The default covers the
    /// kernel's OOM reaper, which steps in 2 s after a kill
    /// (OOM_REAPER_DELAY in mm/oom_kill.c) to free the memory of a victim
    /// that has not exited: victims that need it exit just after.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION",
          allow_hyphen_values = true)]
    pub exit_wait: Duration,
    /// How long a victim written without its exit is still watched. Its exit
    /// within this horizon is written as a `late_exit` record naming the
    /// kill (a victim stuck in the kernel, on a hung NFS or FUSE mount, can
    /// take minutes). Past it, the kill counts in `stop` as one whose exit
    /// was never seen.
    #[arg(long, value_parser = parse_duration, default_value = "10m", value_name = "DURATION",
          allow_hyphen_values = true)]
    pub exit_retention: Duration,
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
    /// `k8s.namespace`, `k8s.pod` and `k8s.container`, and the container
    /// runtimes' state (see --docker-root and the like). In a DaemonSet
    /// that mounts the host at /host, pass `--host-root /host`.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub host_root: PathBuf,
    /// Docker's data root, inside --host-root: `container.name` and
    /// `container.image` of a Docker container come from
    /// DIR/containers/<id>/config.v2.json. Change it for a dockerd started
    /// with `--data-root DIR` (or `data-root` in daemon.json), such as a
    /// private one for CI.
    #[arg(long, default_value = DOCKER_ROOT, value_name = "DIR")]
    pub docker_root: PathBuf,
    /// containerd's state directory, inside --host-root: a running task's
    /// OCI bundle,
    /// DIR/io.containerd.runtime.v2.task/<namespace>/<id>/config.json,
    /// carries the CRI plugin's names of a Kubernetes container. Change it for a containerd with another `state` in its
    /// config.toml (k3s: /run/k3s/containerd).
    #[arg(long, default_value = CONTAINERD_ROOT, value_name = "DIR")]
    pub containerd_root: PathBuf,
    /// CRI-O's containers/storage root, inside --host-root: the names of a
    /// CRI-O container come from
    /// DIR/overlay-containers/<id>/userdata/config.json. Change it for a CRI-O whose storage.conf sets another
    /// `graphroot` (or started with `--root DIR`).
    #[arg(long, default_value = CONTAINERS_STORAGE_ROOT, value_name = "DIR")]
    pub crio_root: PathBuf,
    /// Podman's containers/storage root, inside --host-root: the names of a
    /// Podman container come from DIR/<driver>-containers/containers.json.
    /// Change it for `podman --root DIR`, or a rootless user's storage
    /// (/home/USER/.local/share/containers/storage).
    #[arg(long, default_value = CONTAINERS_STORAGE_ROOT, value_name = "DIR")]
    pub podman_root: PathBuf,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Do not read the kernel log (/dev/kmsg). By default each kill is
    /// matched with the OOM killer's own `oom-kill:` line, which names the
    /// memcg whose limit fired exactly, and `oom.kernel_log` says how that
    /// went.
    #[arg(long)]
    pub no_kernel_log: bool,
    /// How often the memory of every memcg that holds processes is sampled
    /// (usage, memory.stat, pressure), so that each kill record's `memory`
    /// tells how it got to the limit: a leak, a spike, tmpfs, or a workload
    /// at its limit. `0` turns sampling off (`memory` is then null). A
    /// memcg is found within 3 intervals of its first process. At least
    /// 100ms.
    #[arg(long, value_parser = parse_sample_interval, default_value = "1s", value_name = "DURATION",
          allow_hyphen_values = true)]
    pub sample_interval: Duration,
    /// How much memory history each memcg keeps (and a kill record shows
    /// in `memory.history`).
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION",
          allow_hyphen_values = true)]
    pub sample_window: Duration,
    /// How often a `heartbeat` record (alive, with the counters so far) is
    /// written, so that a reader can tell silence from health. `0` turns it
    /// off.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION",
          allow_hyphen_values = true)]
    pub heartbeat_interval: Duration,
    /// Serve Prometheus metrics on ADDR:PORT (e.g. 0.0.0.0:9410,
    /// 127.0.0.1:9410, [::]:9410): `GET /metrics` (OpenMetrics, or the
    /// classic text format to a client that does not ask for it) and `GET
    /// /healthz` (200 while the pipeline and the ring buffer's event loop
    /// both went round within the last 30 s, else 503 saying which). Off by
    /// default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How many namespace/pod/container subjects `oomtrace_kills_total`
    /// gives a series of their own. Kills of any further subject are
    /// counted in one series per cause whose namespace, pod and container
    /// are `_overflow`, and in `oomtrace_kills_folded_total`. Subjects are
    /// names (never container ids), so a restarted container keeps its
    /// series.
    #[arg(long, default_value_t = metrics::DEFAULT_MAX_SERIES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub metrics_max_series: u32,
    /// How many kills may wait for their exits at once; beyond it the oldest
    /// is written without its exit (and still watched for a late exit).
    #[arg(long, hide = true, default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=MAX_PENDING as i64))]
    pub max_pending: u32,
}

impl RunArgs {
    /// The runtimes' state roots, by the name of their source in the
    /// runtime state table.
    pub fn runtime_roots(&self) -> RuntimeRoots {
        self.runtime_root_flags()
            .into_iter()
            .fold(RuntimeRoots::default(), |roots, (source, _, dir, _)| {
                roots.with(source, dir.clone())
            })
    }

    /// Each root flag: its source's name, the flag, its value, its default.
    fn runtime_root_flags(&self) -> [(&'static str, &'static str, &PathBuf, &'static str); 4] {
        [
            ("docker", "--docker-root", &self.docker_root, DOCKER_ROOT),
            (
                "containerd",
                "--containerd-root",
                &self.containerd_root,
                CONTAINERD_ROOT,
            ),
            (
                "crio",
                "--crio-root",
                &self.crio_root,
                CONTAINERS_STORAGE_ROOT,
            ),
            (
                "podman",
                "--podman-root",
                &self.podman_root,
                CONTAINERS_STORAGE_ROOT,
            ),
        ]
    }
}

/// The longest `--exit-wait` or `--exit-retention`: a day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most `--max-pending` kills that may wait at once.
const MAX_PENDING: u32 = 1 << 20;
/// At shutdown, how long kills still waiting may wait for their exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// At shutdown, how long the output may take to write what is queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// The memory sampler, unless `--sample-interval 0` or no memory
/// controller is in reach (then `memory` is null, as with sampling off).
fn start_sampler(
    args: &RunArgs,
    facts: &oomtrace_record::HostFacts,
) -> anyhow::Result<Option<Sampler>> {
    if args.sample_interval.is_zero() {
        return Ok(None);
    }
    let version = match facts.memory_controller.as_ref().map(|m| m.version) {
        Some(1) => SampleVersion::V1,
        Some(_) => SampleVersion::V2,
        None => return Ok(None),
    };
    // Paths are matched with the kernel's: only a mount that shows the
    // hierarchy from its root will do.
    let Some(mount) = host::cgroup_root_dir(facts) else {
        log::warn!("the memory cgroup mount does not show its root: no memory sampling");
        return Ok(None);
    };
    let config = SamplerConfig {
        interval: args.sample_interval,
        window: args.sample_window.max(args.sample_interval),
        mount,
        version,
    };
    Sampler::spawn(config)
        .map(Some)
        .context("starting the memory sampler thread")
}

/// The shortest `--sample-interval`: each round reads every memcg's files,
/// and shorter would spend a CPU on a large node for nothing PSI's 10 s
/// averages and a leak's slope could use.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

fn parse_sample_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !interval.is_zero() && interval < MIN_SAMPLE_INTERVAL {
        return Err(format!(
            "at least {} (or 0: no sampling)",
            humantime::format_duration(MIN_SAMPLE_INTERVAL)
        ));
    }
    Ok(interval)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err("a duration cannot be negative".to_string());
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write it as 500ms, 5s, 10m, 1h)"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    host::privileges::check()?;
    // Before the warnings below, which would only bury this error.
    attach::in_initial_user_namespace()?;
    // Signal handlers first: a stop signal during the start-up (a supervisor
    // giving up on a slow start) still ends the run cleanly, with `stop`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let signals = {
        let _in_runtime = runtime.enter();
        listen_for_signals()?
    };
    // Open the output first: a typo in --output should fail before attaching.
    let destination = match &args.output {
        Some(path) => Destination::file(path).context("--output")?,
        None => Destination::stdout(),
    };
    let mut notes = Vec::new();
    if destination.discards_everything() {
        let warning = "stdout is /dev/null (closed at start, or redirected there): every record \
                       is discarded. Write to a file with -o FILE, or pipe stdout to a reader";
        eprintln!("oomtrace: warning: {warning}");
        notes.push(warning.to_string());
    }
    // Before attaching: a port in use fails the start at once.
    let (metrics_server, metrics_listener) = args
        .metrics_addr
        .map(|addr| start_metrics(addr, args.metrics_max_series as usize, &runtime))
        .transpose()?
        .unzip();
    check_host_root(&args.host_root, &mut notes)?;
    check_runtime_roots(&args, &mut notes);
    let oom_score_adj = host::protect_self(args.oom_score_adj);
    if let Some(error) = &oom_score_adj.error {
        log::warn!("{error}; continuing");
        notes.push(format!(
            "{error}; the collector is as killable as any process"
        ));
    }
    // Before any other thread starts: threads inherit it.
    let nice = host::prioritize_self(args.nice);
    if let Some(error) = &nice.error {
        log::warn!("{error}; continuing");
        notes.push(format!(
            "{error}; records may be late while the CPUs are busy"
        ));
    }
    host::raise_memlock_limit();

    // Opened before attaching, at the log's end: every kill traced from here
    // on has its lines after this point.
    let kernel_log = if args.no_kernel_log {
        Err("--no-kernel-log".to_string())
    } else {
        kmsg::KernelLog::open().map_err(|e| {
            let error = format!("cannot read {}: {e}", kmsg::KMSG);
            log::warn!(
                "{error}; oom.memcg_path will be derived where oom_kill_process is not hooked"
            );
            error
        })
    };
    let facts = host::gather();
    let origin = host::origin(&facts);
    let tracer = attach::attach(&args.probes.options(), &facts)?;
    for note in &tracer.notes {
        log::info!("{note}");
    }
    notes.extend(tracer.notes);
    let collector = CollectorStatus {
        pid: std::process::id(),
        exit_wait_ms: args.exit_wait.as_millis() as u64,
        exit_retention_ms: Some(args.exit_retention.as_millis() as u64),
        oom_score_adj,
        nice,
        kernel_log: Some(KernelLogStatus {
            read: kernel_log.is_ok(),
            error: kernel_log.as_ref().err().cloned(),
        }),
    };
    let signal_hook = tracer
        .probes
        .iter()
        .any(|p| p.name == oomtrace_record::Hook::SignalGenerate && p.mode.is_some());
    let start = convert::start(&origin, facts.clone(), tracer.probes, collector, notes);

    let target = destination.target();
    let output_end = Arc::new(OutputEnded::default());
    let writer = Writer::spawn(destination, QUEUE_BYTES, {
        let ended = Arc::clone(&output_end);
        move |end| ended.set(end)
    })
    .context("starting the writer thread")?;
    let sampler = start_sampler(&args, &facts)?;
    let settings = Settings {
        origin,
        page_size: facts.page_size,
        host_root: args.host_root.clone(),
        limits: JoinLimits {
            exit_wait: args.exit_wait,
            retention: args.exit_retention,
            max_waiting: args.max_pending as usize,
            // Leave the kernel's map a quarter for kills arriving faster
            // than the pipeline can forget old ones.
            max_tracked: oomtrace_ebpf::VICTIMS_CAPACITY as usize * 3 / 4,
        },
        kernel_log: kernel_log.is_ok(),
        host: HostView {
            pid_ns: facts.pid_ns,
            cgroup_root: host::cgroup_root_dir(&facts),
            runtime_roots: args.runtime_roots(),
        },
        signal_hook,
        memory: sampler.as_ref().map(Sampler::view),
        heartbeat: Some(args.heartbeat_interval).filter(|h| !h.is_zero()),
    };
    let mut listeners: Vec<Box<dyn crate::pipeline::Listener>> =
        vec![Box::new(writer.listener(args.format))];
    if let Some(listener) = metrics_listener {
        listeners.push(Box::new(listener));
    }
    let pipeline = Pipeline::spawn(settings, tracer.victims, tracer.counters, listeners, start)
        .context("starting the pipeline thread")?;
    if let Ok(kernel_log) = kernel_log {
        let inbox = pipeline.inbox();
        kernel_log
            .spawn(move |line| inbox.push_kernel_line(line))
            .context("starting the kernel log thread")?;
    }

    let mut ebpf = tracer.ebpf;
    let reason = runtime.block_on(drain_until_stopped(
        &mut ebpf,
        tracer.events,
        &pipeline,
        &writer,
        &output_end,
        signals,
        args.exit_wait,
    ))?;
    let counters = pipeline.finish(reason.unwrap_or(StopReason::Sigterm));
    if let Some(sampler) = sampler {
        sampler.finish();
    }
    match writer.finish(FLUSH_DEADLINE) {
        Ended::Flushed | Ended::Closed => {}
        Ended::Blocked { unwritten } => eprintln!(
            "oomtrace: {target} stayed blocked for {}s at shutdown: {unwritten} records \
             (among them `stop`) were not written; counters at stop: {counters:?}",
            FLUSH_DEADLINE.as_secs()
        ),
    }
    log::info!("stopped: {counters:?}");
    if let Some(server) = metrics_server {
        server.finish();
    }
    // Detach only now: every record the kernel made has been read.
    drop(ebpf);
    match output_end.take() {
        Some(OutputEnd::Unwritable(error)) => Err(anyhow::anyhow!(
            "{error}: {target} cannot take records; nothing was traced"
        )),
        _ => Ok(()),
    }
}

/// Serves the metrics on `addr`, and stamps the event loop's health from a
/// task on it (which runs only while the loop drains the ring buffer).
fn start_metrics(
    addr: std::net::SocketAddr,
    max_series: usize,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(MetricsServer, metrics::MetricsListener)> {
    let metrics = Metrics::new(max_series);
    let listener = metrics.listener();
    runtime.spawn(metrics.health().stamp_event_loop_forever());
    let server = MetricsServer::spawn(addr, metrics).context("--metrics-addr")?;
    log::info!("serving metrics on http://{}/metrics", server.addr());
    Ok((server, listener))
}

/// `--host-root` must be a directory; without the kubelet's pod log
/// directories under it, Kubernetes names stay null (a note says so).
fn check_host_root(host_root: &std::path::Path, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(host_root)
        .with_context(|| format!("--host-root {}", host_root.display()))?;
    if !meta.is_dir() {
        anyhow::bail!(
            "--host-root {} is not a directory: give the directory where the node's root \
             filesystem is mounted (/ on the node itself, /host in a DaemonSet that mounts it there)",
            host_root.display()
        );
    }
    let pods = host_root.join("var/log/pods");
    if !pods.is_dir() {
        notes.push(format!(
            "no kubelet pod logs at {}: k8s.namespace, k8s.pod and k8s.container will be null",
            pods.display()
        ));
    }
    Ok(())
}

/// A runtime root given on the command line that is not there is most
/// likely a typo, which would silently leave that runtime's containers
/// unnamed: a note says so. A default that is not there is a runtime this
/// host does not run.
fn check_runtime_roots(args: &RunArgs, notes: &mut Vec<String>) {
    for (_, flag, dir, default) in args.runtime_root_flags() {
        let inside = args
            .host_root
            .join(dir.strip_prefix("/").unwrap_or(dir.as_path()));
        if dir.as_path() != std::path::Path::new(default) && !inside.is_dir() {
            notes.push(format!(
                "{flag} {}: no such directory at {}: container names and images from it \
                 will be null",
                dir.display(),
                inside.display()
            ));
        }
    }
}

/// How the output ended, as the writer thread reports it.
#[derive(Default)]
struct OutputEnded {
    end: Mutex<Option<OutputEnd>>,
    notify: Notify,
}

impl OutputEnded {
    fn set(&self, end: OutputEnd) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<OutputEnd> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Drains the ring buffer into the pipeline until a stop signal (its
/// reason) or until the output can take no more (None). On a signal, keeps
/// draining for a short grace while kills still wait for their exits.
async fn drain_until_stopped(
    ebpf: &mut aya::Ebpf,
    events: RingBuf<MapData>,
    pipeline: &Pipeline,
    writer: &Writer,
    output_end: &OutputEnded,
    mut signals: mpsc::UnboundedReceiver<Option<StopReason>>,
    exit_wait: Duration,
) -> anyhow::Result<Option<StopReason>> {
    let inbox = pipeline.inbox();
    let mut events = watch(events).context("watching the ring buffer")?;
    // The programs' own diagnostics (failed kernel reads and the like), at
    // debug level; never event data.
    let mut ebpf_log = if log::log_enabled!(log::Level::Debug) {
        aya_log::EbpfLogger::init(ebpf)
            .ok()
            .and_then(|logger| watch(logger).ok())
    } else {
        None
    };
    let reason = loop {
        tokio::select! {
            Some(signal) = signals.recv() => match signal {
                Some(reason) => break reason,
                None => writer.reopen(),
            },
            _ = output_end.notify.notified() => {
                log::info!("the output can take no more records; stopping");
                return Ok(None);
            }
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                ring::drain(guard.get_inner_mut(), |event| inbox.push(event));
                guard.clear_ready();
            }
            Some(()) = flush_ebpf_log(&mut ebpf_log) => {}
        }
    };
    log::info!("{reason:?}: flushing");

    // Read what the kernel has queued, then give kills still waiting a
    // short grace for their exits. A second stop signal ends the grace.
    ring::drain(events.get_mut(), |event| inbox.push(event));
    let grace_end = Instant::now() + SHUTDOWN_GRACE.min(exit_wait);
    while pipeline.waiting_for_exits() > 0 && Instant::now() < grace_end {
        tokio::select! {
            guard = events.readable_mut() => {
                if let Ok(mut guard) = guard {
                    ring::drain(guard.get_inner_mut(), |event| inbox.push(event));
                    guard.clear_ready();
                }
            }
            // The pipeline's count moves as it works through its inbox.
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            Some(Some(_)) = signals.recv() => break,
        }
    }
    ring::drain(events.get_mut(), |event| inbox.push(event));
    Ok(Some(reason))
}

/// Registers a map's fd with the event loop for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a ring buffer map or the log map) and keeps
    // it open and unchanged for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
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
