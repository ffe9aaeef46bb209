//! The benchmark behind `cargo xtask bench`: oomtrace against bpftrace
//! running the equivalent tracepoint program, on this kernel. Needs root.
//!
//! Every figure is a median over repeated runs; every comparison is a ratio
//! taken within one round, the tools alternating (oomtrace, bpftrace,
//! oomtrace, ...), so that drift in the machine's load hits both alike.
//!
//! - ready time: from spawning the tool to its ready signal (oomtrace's
//!   `start` record; bpftrace's "probes attached" notice);
//! - steady RSS: VmRSS after `--idle` seconds of doing nothing, once per tool;
//! - peak RSS: VmHWM read just before stopping the tool after a storm;
//! - exit-path overhead: how much longer a fork()+_exit() storm takes with
//!   the tool attached than with nothing attached (both tools hook every
//!   process exit);
//! - signal-path overhead: how much more CPU time a storm of kill(2)s of
//!   SIGUSR1 takes with the tool attached (oomtrace's signal hook sees every
//!   signal, and returns after one compare for all but SIGKILL and
//!   SIGTERM), and what its program costs per signal (signal.rs);
//! - storm capture: OOM kills each tool recorded out of the kernel's count,
//!   across many cgroups at once, and how many it joined to their exit
//!   with code 137; CPU seconds each tool spent on the storm;
//! - pipeline storm capture: the same two counts for a storm of shell
//!   pipelines (`sh -c 'head -c 200000000 /dev/zero | tail'`), whose tails
//!   often take ~2 s to exit after their kill; for oomtrace a kill counts as
//!   joined if its record or its `late_exit` says 137;
//! - latency: from the kill (and from the victim's exit) to the moment the
//!   line reaches this benchmark;
//! - sampler cost: oomtrace's CPU and RSS with 500 idle memcgs, each
//!   holding one sleeping process, with its memory sampler at the default
//!   interval and with it off (sampler.rs); bpftrace has no such part;
//! - post-mortem: `oomtrace report` over a generated fleet's day (1 GB,
//!   2 million records from 1,000 nodes) against jq counting the same
//!   kills per container (post_mortem.rs);
//! - rank: `oomtrace rank` over the machine's processes plus 2,000 sleepers
//!   against seed 000's `rank_oom.sh` on the same processes, wall and CPU
//!   time (rank.rs).
//!
//! Usage: oomtrace-bench [--oomtrace PATH] [--workload PATH] [--bpftrace PATH]
//!                       [--out FILE] [--quick] [--idle SECS]
//!                       [--only ready|memory|overhead|signal|storm|pipeline-storm|sampler|report|rank]...
//!        oomtrace-bench fork-storm N   (the exit-path load: N × fork()+_exit(0);
//!                                       prints the nanoseconds it took)
//!        oomtrace-bench signal-storm N (the signal-path load: N × kill(2) of a
//!                                       handled SIGUSR1 to itself; likewise)
//! Prints a table and writes every raw sample and median to FILE
//! (default bench.json). `--only` (repeatable) measures just those figures.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark harness: failing loudly is the point"
)]

mod post_mortem;
mod rank;
mod report;
mod sampler;
mod signal;
mod storm_capture;
mod tool;

use std::{path::PathBuf, process::Command, time::Duration};

use oomtrace_tests::{Env, cgroup};
use serde_json::{Value, json};

use report::{Report, Samples, fmt_mib, fmt_ms, median, ms, percentile, ratio_text};
use signal::{SIGNALS, signal_overhead, signal_storm};
use storm_capture::{pipeline_storm_capture, storm_capture};
use tool::{Running, TOOLS, Tool, clock_ns, status_kb, tools_for_round};

/// What bpftrace runs: the same work as oomtrace's hooks, minus the
/// enrichment. mark_victim stores the victim in a map; every process exit
/// looks itself up in that map (one hash lookup that misses, as oomtrace's
/// exit hook does), and a victim's exit is joined to its kill and printed;
/// every signal is filtered to SIGKILL, which is remembered (oomtrace's
/// signal hook, on by default). `nsecs` is CLOCK_MONOTONIC. Every figure
/// runs it whole: a fork+exit also sends SIGCHLD, which both tools' signal
/// hooks see, so the exit path is compared like for like.
pub(crate) const BPFTRACE_PROGRAM: &str = r#"
tracepoint:oom:mark_victim {
  @victim[args->pid] = nsecs;
  printf("kill %d %llu %s\n", args->pid, nsecs, str(args->comm));
}
tracepoint:sched:sched_process_exit /@victim[args->pid]/ {
  printf("exit %d %d %llu\n", args->pid, curtask->exit_code, nsecs - @victim[args->pid]);
  delete(@victim[args->pid]);
}
tracepoint:signal:signal_generate /args->sig == 9/ { @k[args->pid] = nsecs; }
"#;
/// bpftrace prints this (to stderr) once every probe is attached; its
/// "Attaching N probes..." comes before loading and attaching.
pub(crate) const BPFTRACE_ATTACHED: &str = "__BPFTRACE_NOTIFY_PROBES_ATTACHED";
/// oomtrace's default --exit-wait: a kill record waits this long for its exit.
pub(crate) const OOMTRACE_EXIT_WAIT: Duration = Duration::from_secs(5);
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// `--help`: the usage lines of the comment above.
const USAGE: &str = "\
Usage: oomtrace-bench [--oomtrace PATH] [--workload PATH] [--bpftrace PATH]
                      [--out FILE] [--quick] [--idle SECS]
                      [--only ready|memory|overhead|signal|storm|pipeline-storm|sampler|report|rank]...
       oomtrace-bench fork-storm N
       oomtrace-bench signal-storm N
Runs oomtrace and bpftrace in alternation (root), prints a table and writes every
sample and median to FILE (default bench.json). --only (repeatable) measures just
those figures; --quick runs fewer, smaller rounds (to see that it works).
";

pub(crate) struct Config {
    pub(crate) env: Env,
    pub(crate) bpftrace: String,
    pub(crate) out: PathBuf,
    pub(crate) ready_runs: usize,
    pub(crate) overhead_runs: usize,
    pub(crate) forks: usize,
    /// Signals per signal storm.
    pub(crate) signals: usize,
    pub(crate) storm_rounds: usize,
    pub(crate) cgroups: usize,
    pub(crate) kills_per_cgroup: usize,
    pub(crate) idle: Duration,
    /// The figures to measure (`--only`); empty for all of them.
    pub(crate) only: Vec<String>,
}

impl Config {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("fork-storm") {
        let n = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .expect("fork-storm N");
        return fork_storm(n);
    }
    if args.first().map(String::as_str) == Some("signal-storm") {
        let n = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .expect("signal-storm N");
        return signal_storm(n);
    }
    let cfg = parse(args);
    let mut report = Report::default();
    let host = host_facts(&cfg);
    println!(
        "oomtrace-bench: {} vs {}; Linux {}, {} CPUs",
        cfg.env.oomtrace.display(),
        host["bpftrace"].as_str().unwrap_or("bpftrace"),
        host["kernel"].as_str().unwrap_or("?"),
        host["cpus"]
    );
    report.json.insert("host".into(), host);
    if cfg.wants("ready") {
        ready_time(&cfg, &mut report);
    }
    if cfg.wants("memory") {
        steady_memory(&cfg, &mut report);
    }
    if cfg.wants("overhead") {
        exit_overhead(&cfg, &mut report);
    }
    if cfg.wants("signal") {
        signal_overhead(&cfg, &mut report);
    }
    if cfg.wants("storm") {
        storm_capture(&cfg, &mut report);
    }
    if cfg.wants("pipeline-storm") {
        pipeline_storm_capture(&cfg, &mut report);
    }
    if cfg.wants("sampler") {
        sampler::sampler_cost(&cfg, &mut report);
    }
    if cfg.wants("report") {
        post_mortem::report_speed(&cfg, &mut report);
    }
    if cfg.wants("rank") {
        rank::rank_speed(&cfg, &mut report);
    }
    report.finish(&cfg.out);
}

fn parse(args: Vec<String>) -> Config {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let (mut oomtrace, mut workload) = (dir.join("oomtrace"), dir.join("oomtrace-workload"));
    let (mut bpftrace, mut out) = ("bpftrace".to_string(), PathBuf::from("bench.json"));
    let (mut quick, mut idle, mut only) = (false, None, Vec::new());
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--oomtrace" => oomtrace = PathBuf::from(value()),
            "--workload" => workload = PathBuf::from(value()),
            "--bpftrace" => bpftrace = value(),
            "--out" => out = PathBuf::from(value()),
            "--quick" => quick = true,
            "--idle" => idle = Some(value().parse().expect("--idle SECS")),
            "--only" => only.push(value()),
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                panic!("unknown argument {other} (see the comment at the top of bench/main.rs)")
            }
        }
    }
    const FIGURES: [&str; 9] = [
        "report",
        "rank",
        "ready",
        "memory",
        "overhead",
        "signal",
        "storm",
        "pipeline-storm",
        "sampler",
    ];
    if let Some(unknown) = only.iter().find(|f| !FIGURES.contains(&f.as_str())) {
        panic!("--only {unknown}: not one of {FIGURES:?}");
    }
    // --quick: enough of everything to see that it works, not to trust.
    let pick = |full: usize, fast: usize| if quick { fast } else { full };
    Config {
        env: Env::new(oomtrace, workload),
        bpftrace,
        out,
        ready_runs: pick(7, 3),
        overhead_runs: pick(15, 3),
        forks: pick(10_000, 5_000),
        signals: pick(SIGNALS, 30_000),
        storm_rounds: pick(3, 1),
        cgroups: pick(20, 10),
        kills_per_cgroup: pick(10, 5),
        idle: Duration::from_secs(idle.unwrap_or(if quick { 5 } else { 30 })),
        only,
    }
}

fn host_facts(cfg: &Config) -> Value {
    let bpftrace = Command::new(&cfg.bpftrace)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e} (is bpftrace installed?)", cfg.bpftrace));
    json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cgroup": format!("{:?}", cgroup::memory_mount().0),
        "bpftrace": String::from_utf8_lossy(&bpftrace.stdout).trim(),
        "bpftrace_program": BPFTRACE_PROGRAM,
        "oomtrace": cfg.env.oomtrace,
    })
}

fn ready_time(cfg: &Config, report: &mut Report) {
    let (mut samples, mut attaching, mut ratios) = (Samples::default(), Vec::new(), Vec::new());
    for _ in 0..cfg.ready_runs {
        for tool in TOOLS {
            let mut running = Running::start(tool, cfg);
            samples.push(tool, ms(running.ready_after));
            if let Some(at) = running.attaching_after {
                attaching.push(ms(at));
            }
            running.stop();
        }
        ratios.push(samples.o.last().unwrap() / samples.b.last().unwrap());
    }
    let ratio = median(&ratios);
    report.row(
        &format!("ready time (median of {})", cfg.ready_runs),
        &fmt_ms(median(&samples.o)),
        &fmt_ms(median(&samples.b)),
        &format!("{ratio:.2}"),
        "<=0.25",
        Some(ratio <= 0.25),
    );
    report.json.insert(
        "ready_time".into(),
        json!({"oomtrace_ms": samples.o, "bpftrace_ms": samples.b,
               "bpftrace_attaching_line_ms": attaching, "ratios": ratios,
               "median": {"oomtrace_ms": median(&samples.o), "bpftrace_ms": median(&samples.b),
                          "ratio": ratio}}),
    );
}

/// Steady RSS once per tool: `--idle` seconds of nothing, then VmRSS.
fn steady_memory(cfg: &Config, report: &mut Report) {
    let mut samples = Vec::new();
    for tool in TOOLS {
        let mut running = Running::start(tool, cfg);
        std::thread::sleep(cfg.idle);
        let rss = status_kb(running.pid(), "VmRSS:");
        let hwm = status_kb(running.pid(), "VmHWM:");
        running.stop();
        samples.push(json!({"tool": tool.name(), "vm_rss_kb": rss, "vm_hwm_kb": hwm}));
    }
    let rss = |i: usize| samples[i]["vm_rss_kb"].as_u64().unwrap() as f64;
    report.row(
        &format!("steady RSS (idle {} s)", cfg.idle.as_secs()),
        &fmt_mib(rss(0)),
        &fmt_mib(rss(1)),
        &format!("{:.2}", rss(0) / rss(1)),
        "",
        None,
    );
    report.json.insert(
        "steady_memory".into(),
        json!({"idle_secs": cfg.idle.as_secs(), "samples": samples}),
    );
}

/// One storm's cost (of forks, or of signals), in ms.
#[derive(Clone, Copy)]
pub(crate) struct StormCost {
    pub(crate) wall_ms: f64,
    /// CPU time of the storm process and all its children: the exit hooks
    /// run in the exiting child, so their cost lands here, without the
    /// scheduling noise that wall time has.
    pub(crate) cpu_ms: f64,
}

impl StormCost {
    /// From a storm subcommand's output: wall and CPU time, in ns.
    fn parse(out: &std::process::Output) -> Self {
        assert!(out.status.success(), "storm: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let ns: Vec<f64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        StormCost {
            wall_ms: ns[0] / 1e6,
            cpu_ms: ns[1] / 1e6,
        }
    }
}

/// A pause after starting or stopping a tool, so that its own start-up and
/// teardown (BTF parsing, freeing its memory) do not land in a timed storm.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

/// Picks one figure of a [`StormCost`].
pub(crate) type CostOf = fn(&StormCost) -> f64;

/// Runs `oomtrace-bench fork-storm N` and returns what the storm cost.
fn timed_fork_storm(cfg: &Config) -> StormCost {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["fork-storm", &cfg.forks.to_string()])
        .output()
        .unwrap();
    StormCost::parse(&out)
}

/// The exit-path load: the caller times only the loop, not its own exec.
/// Pinned to one CPU, so that migrations do not add noise. Prints the wall
/// time and the CPU time (self and children), in ns.
fn fork_storm(n: usize) {
    pin_to_last_cpu();
    let started = clock_ns(libc::CLOCK_MONOTONIC);
    for _ in 0..n {
        // SAFETY: this process is single-threaded (nothing else runs in this
        // mode), and the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waiting for the child we just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let wall = clock_ns(libc::CLOCK_MONOTONIC) - started;
    let cpu = rusage_ns(libc::RUSAGE_SELF) + rusage_ns(libc::RUSAGE_CHILDREN);
    println!("{wall} {cpu}");
}

/// Pins this process (a storm) to the last CPU, so that migrations do not
/// add noise.
pub(crate) fn pin_to_last_cpu() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity only touch the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        libc::CPU_SET(cpus - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// User + system time from getrusage(2), in ns.
pub(crate) fn rusage_ns(who: i32) -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Baseline, oomtrace, bpftrace, baseline, bpftrace, oomtrace, baseline, ...:
/// each tool's cost is compared with the mean of the baselines just before
/// and just after its round.
/// Then one more storm per tool with the kernel's BPF run-time statistics
/// on, for the exact time its programs took per exit (the statistics cost
/// a clock read per run, so they stay off during the timed rounds).
fn exit_overhead(cfg: &Config, report: &mut Report) {
    timed_fork_storm(cfg); // warm-up: page cache, the helper's first fork
    let mut baseline = vec![timed_fork_storm(cfg)];
    let (mut with_o, mut with_b) = (Vec::new(), Vec::new());
    for round in 0..cfg.overhead_runs {
        for tool in tools_for_round(round) {
            let mut running = Running::start(tool, cfg);
            std::thread::sleep(SETTLE);
            let cost = timed_fork_storm(cfg);
            running.stop();
            std::thread::sleep(SETTLE);
            match tool {
                Tool::Oomtrace => with_o.push(cost),
                Tool::Bpftrace => with_b.push(cost),
            }
        }
        baseline.push(timed_fork_storm(cfg));
    }
    let hook_ns = TOOLS.map(|tool| hook_ns_per_exit(cfg, tool));
    let overheads = |with: &[StormCost], f: CostOf| overheads(&baseline, with, f);
    let cpu: CostOf = |c| c.cpu_ms;
    let wall: CostOf = |c| c.wall_ms;
    let (o, b) = (overheads(&with_o, cpu), overheads(&with_b, cpu));
    let (o_wall, b_wall) = (overheads(&with_o, wall), overheads(&with_b, wall));
    let series = |costs: &[StormCost], f: CostOf| -> Vec<f64> { costs.iter().map(f).collect() };
    let pct = |v: f64| format!("{:+.1}%", v * 100.0);
    report.row(
        &format!(
            "exit-path overhead, CPU ({}k forks, median of {}, IQR {})",
            cfg.forks / 1000,
            cfg.overhead_runs,
            pct_range(&o)
        ),
        &pct(median(&o)),
        &pct(median(&b)),
        "",
        "<=2%",
        // When the rounds spread wider than the target itself, the median
        // says more about the machine than about the tool: no verdict.
        (iqr_width(&o) <= 0.04).then_some(median(&o) <= 0.02),
    );
    // What one fork+exit costs without any tool, for scale.
    let per_exit_ns = median(&series(&baseline, cpu)) * 1e6 / cfg.forks as f64;
    let share = |ns: Option<f64>| ns.map_or("n/a".into(), |ns| pct(ns / per_exit_ns));
    let within_target = hook_ns[0].map(|ns| ns / per_exit_ns <= 0.02);
    report.row(
        "eBPF run time per exit (bpf_stats)",
        &hook_ns[0].map_or("n/a".into(), |ns| {
            format!("{ns:.0} ns ({})", share(Some(ns)))
        }),
        &hook_ns[1].map_or("n/a".into(), |ns| {
            format!("{ns:.0} ns ({})", share(Some(ns)))
        }),
        &match hook_ns {
            [Some(o), Some(b)] => ratio_text(o, b),
            _ => String::new(),
        },
        "<=2%",
        within_target,
    );
    report.row(
        "exit-path overhead, wall time (median)",
        &pct(median(&o_wall)),
        &pct(median(&b_wall)),
        "",
        "",
        None,
    );
    report.json.insert(
        "exit_overhead".into(),
        json!({"forks": cfg.forks,
               "baseline_cpu_ms": series(&baseline, cpu), "baseline_wall_ms": series(&baseline, wall),
               "oomtrace_cpu_ms": series(&with_o, cpu), "oomtrace_wall_ms": series(&with_o, wall),
               "bpftrace_cpu_ms": series(&with_b, cpu), "bpftrace_wall_ms": series(&with_b, wall),
               "oomtrace_overhead_cpu": o, "bpftrace_overhead_cpu": b,
               "oomtrace_overhead_wall": o_wall, "bpftrace_overhead_wall": b_wall,
               "hook_ns_per_exit": {"oomtrace": hook_ns[0], "bpftrace": hook_ns[1]},
               "baseline_cpu_ns_per_exit": per_exit_ns,
               "median": {"oomtrace_overhead_cpu": median(&o), "bpftrace_overhead_cpu": median(&b),
                          "oomtrace_overhead_wall": median(&o_wall),
                          "bpftrace_overhead_wall": median(&b_wall)}}),
    );
}

/// Each of `with`'s costs over the mean of the baselines just before and
/// just after it, less one: `baseline` has one more storm than `with`.
pub(crate) fn overheads(baseline: &[StormCost], with: &[StormCost], f: CostOf) -> Vec<f64> {
    let around = |i: usize| (f(&baseline[i]) + f(&baseline[i + 1])) / 2.0;
    (0..with.len())
        .map(|i| f(&with[i]) / around(i) - 1.0)
        .collect()
}

/// Run time of every eBPF program `tool` loaded, per fork+exit of one storm,
/// from the kernel's own accounting (BPF_ENABLE_STATS, Linux 5.8+): the
/// exit hook, and anything else of the tool's that ran. None where the
/// kernel does not keep the statistics.
fn hook_ns_per_exit(cfg: &Config, tool: Tool) -> Option<f64> {
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            println!("bpf run-time statistics unavailable: {e}");
            return None;
        }
    };
    let before_tool = program_run_times();
    let mut running = Running::start(tool, cfg);
    let before = program_run_times();
    timed_fork_storm(cfg);
    let after = program_run_times();
    running.stop();
    drop(stats);
    let ns: u64 = after
        .iter()
        .filter(|(id, _)| !before_tool.contains_key(id))
        .map(|(id, ns)| ns - before.get(id).copied().unwrap_or(0))
        .sum();
    Some(ns as f64 / cfg.forks as f64)
}

/// Every loaded eBPF program's id and total run time so far, in ns.
fn program_run_times() -> std::collections::HashMap<u32, u64> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.run_time().as_nanos() as u64))
        .collect()
}

/// The interquartile range of `values` (fractions), as "-1.2..+3.4%": how
/// far apart the rounds were, i.e. how much of a median is noise.
pub(crate) fn pct_range(values: &[f64]) -> String {
    let (lo, hi) = (percentile(values, 25.0), percentile(values, 75.0));
    format!("{:+.1}..{:+.1}%", lo * 100.0, hi * 100.0)
}

/// The interquartile range's width.
pub(crate) fn iqr_width(values: &[f64]) -> f64 {
    percentile(values, 75.0) - percentile(values, 25.0)
}
