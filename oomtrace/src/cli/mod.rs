//! The command line: one module per subcommand, plus what `run` and `check`
//! share. Subcommands parse and wire; the work is in `kernel`, `pipeline`
//! and `output`.

mod check;
mod rank;
mod report;
mod run;
mod schema;
mod signals;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use oomtrace_record::AttachMode;

use crate::kernel::attach::{BtfSource, ModeChoice, ProbeOptions};

/// Trace Linux OOM kills from inside the kernel.
///
/// For every process the kernel's OOM killer kills, oomtrace writes one
/// record, taken at the moment of the kill: the victim (pid, comm,
/// oom_score_adj, RSS by kind), its cgroup and that memcg's usage and limit,
/// the task whose allocation failed, why this victim was chosen (where the
/// kernel allows hooking oom_kill_process), and the victim's exit (137 =
/// 128 + SIGKILL), joined from the kernel's own exit hook.
///
/// Start with `oomtrace check` to see what this kernel allows, then
/// `oomtrace run`. Needs root (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN).
#[derive(Debug, Parser)]
#[command(name = "oomtrace", version, max_term_width = 100)]
struct Cli {
    /// More diagnostics on stderr (-v: info, -vv: debug, including the
    /// eBPF programs' own messages). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace OOM kills, one record per line, until SIGTERM or SIGINT.
    ///
    /// Writes a `start` record once every probe is attached (the ready
    /// signal), then one `oom_kill` record per kill, `late_exit` when a
    /// victim exits after its kill was written, `lost` if records could not
    /// be made, and `stop` at the end. Exit status 0 on a signal or when the
    /// reader of stdout goes away; 1 when the output cannot take records at
    /// all (e.g. -o /proc/version).
    ///
    /// Signals: SIGHUP reopens --output (for logrotate's `postrotate kill
    /// -HUP`); SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM,
    /// SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU and the real-time signals
    /// stop it cleanly: kills still waiting are written, then `stop`, whose
    /// `reason` names the signal. A second one cuts the exit grace short. If
    /// the output stays blocked (a stalled reader), it gives up after 10 s
    /// and says on stderr what was not written.
    ///
    /// Example: oomtrace run --format text
    // Boxed: its flags make it far larger than the other variants.
    Run(Box<run::RunArgs>),
    /// Show this machine's facts and what would attach where, and why.
    ///
    /// Loads and attaches every probe for real, then detaches. Exits 1 when
    /// no OOM kill could be traced.
    Check(check::CheckArgs),
    /// Print the JSON Schema of the output records.
    Schema,
    /// The post-mortem: what happened and what to do, from records as a log
    /// pipeline kept them.
    ///
    /// Reads records from files, directories, gzip and stdin, plain or
    /// wrapped (Docker json-file with its 16 KiB pieces joined, CRI logs,
    /// journalctl -o json, --field PATH), drops duplicates (same host, boot,
    /// run and seq), and tells per container, pod or cgroup: kills by
    /// cause, crash loops, children killed in running containers, node-wide
    /// OOMs, the collector's gaps and losses, and one piece of advice each.
    /// Lines of other programs are skipped; a malformed line is named on
    /// stderr (`file:line: reason`) and skipped. Exit 2 with --strict on a
    /// bad line.
    ///
    /// Example: oomtrace report /var/log/oomtrace/ --since 6h
    Report(report::ReportArgs),
    /// Who the OOM killer kills next: per memory cgroup with a limit, and
    /// for the node.
    ///
    /// Reads /proc and the memcg files (no eBPF; without root it ranks what
    /// /proc lets it read and says what it could not). Per memcg with a
    /// limit: usage, limit, headroom, working set and the next victim, the
    /// task the kernel's badness rule picks among that memcg's tasks (rss +
    /// swap + page tables + oom_score_adj × totalpages/1000, in pages, as
    /// mm/oom_kill.c computes it), ties reported as ties. Per process:
    /// oom_score, adj, RSS by kind, swap, page tables, its memcg, container
    /// and pod, and its place in a node-wide OOM. A sample, not an atomic
    /// view: sizes can move between the read and an OOM.
    ///
    /// Example: oomtrace rank --cgroup /docker/ID
    Rank(rank::RankArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check::check(args),
        Command::Schema => schema::schema().map(|()| ExitCode::SUCCESS),
        Command::Report(args) => report::report(args),
        Command::Rank(args) => rank::rank(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("oomtrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VictimProbe {
    /// Raw tracepoint if BTF allows, else the classic tracepoint.
    #[default]
    Auto,
    /// Raw tracepoint `mark_victim`, reading the victim's task_struct.
    Raw,
    /// Classic tracepoint `oom:mark_victim`: only the fields its format has.
    Tracepoint,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OomKillProbe {
    /// fentry, else kprobe, else off.
    #[default]
    Auto,
    Fentry,
    Kprobe,
    /// Do not hook oom_kill_process: `oom.*` stays null.
    Off,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SignalKills {
    /// Hook signal_generate: a `signal_kill` record for every SIGKILL that
    /// is not the OOM killer's kill of its victim, `container_exit` causes
    /// that name the sender, and `oom.killed`.
    #[default]
    On,
    /// Do not hook signal generation: no `signal_kill` records, and
    /// `oom.killed` is null.
    Off,
}

/// How to attach: shared by `run` and `check`, so that `check` tells the
/// truth about what `run` with the same flags would do.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// How to hook oom:mark_victim: `raw` reads the victim's task_struct
    /// (needs BTF); `tracepoint` reads the classic tracepoint's fields.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub victim_probe: VictimProbe,
    /// How to hook oom_kill_process, which knows the OOM's constraint, the
    /// memcg whose limit fired, and the victim's badness points.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub oom_kill_probe: OomKillProbe,
    /// Whether to record SIGKILLs from senders other than the kernel's OOM
    /// killer: userspace OOM killers (earlyoom, systemd-oomd), a runtime's
    /// stop timeout, `kill -9`, cgroup.kill. Each gets a `signal_kill`
    /// record naming the sender. Costs one compare per signal on the node.
    #[arg(long, value_enum, default_value_t, value_name = "WHEN")]
    pub signal_kills: SignalKills,
    /// Kernel BTF to take struct offsets from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH", conflicts_with = "no_btf")]
    pub btf: Option<PathBuf>,
    /// Use no BTF at all: the classic tracepoint only, and only the fields
    /// its format carries (the rest are null).
    #[arg(long)]
    pub no_btf: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    #[arg(long, hide = true)]
    pub ring_buffer_bytes: Option<u32>,
}

impl ProbeArgs {
    pub fn options(&self) -> ProbeOptions {
        let btf = if self.no_btf {
            BtfSource::Disabled
        } else if let Some(path) = &self.btf {
            BtfSource::File(path.clone())
        } else {
            BtfSource::Default
        };
        let mark_victim = match (self.victim_probe, self.no_btf) {
            (VictimProbe::Raw, _) => ModeChoice::Only(AttachMode::RawTracepoint),
            (VictimProbe::Tracepoint, _) | (VictimProbe::Auto, true) => {
                ModeChoice::Only(AttachMode::Tracepoint)
            }
            (VictimProbe::Auto, false) => ModeChoice::Auto,
        };
        let oom_kill_process = match self.oom_kill_probe {
            OomKillProbe::Auto => ModeChoice::Auto,
            OomKillProbe::Fentry => ModeChoice::Only(AttachMode::Fentry),
            OomKillProbe::Kprobe => ModeChoice::Only(AttachMode::Kprobe),
            OomKillProbe::Off => ModeChoice::Off,
        };
        let signal_generate = match self.signal_kills {
            SignalKills::On => ModeChoice::Auto,
            SignalKills::Off => ModeChoice::Off,
        };
        ProbeOptions {
            mark_victim,
            oom_kill_process,
            signal_generate,
            btf,
            ring_buffer_bytes: self.ring_buffer_bytes,
            ebpf_log: log::log_enabled!(log::Level::Debug),
        }
    }
}

#[cfg(test)]
mod tests;
