//! The records around the kills: `start` (what the collector could attach,
//! on which machine), `lost` (what could not be recorded) and `stop`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Origin;

/// Written once, when every probe is attached or has definitively failed:
/// the ready signal. A kill after it is recorded.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Start {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When it was written, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// oomtrace's version.
    pub version: String,
    pub host: HostFacts,
    /// One entry per hook, with how it attached or why it did not.
    pub probes: Vec<ProbeStatus>,
    pub collector: CollectorStatus,
    /// What the operator should know: fields this kernel cannot give, a
    /// fallback taken, a protection that could not be applied.
    pub notes: Vec<String>,
}

/// Facts about the machine, which pick the attach plan.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct HostFacts {
    /// As `uname -n`.
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
    pub cgroup_mode: CgroupMode,
    /// The hierarchy with the memory controller, if any.
    pub memory_controller: Option<MemoryController>,
    /// Whether the kernel's BTF (`/sys/kernel/btf/vmlinux`) is present.
    pub btf: bool,
    /// Mount point of tracefs, or null (oomtrace mounts it only if it needs
    /// it).
    pub tracefs: Option<String>,
    /// Bytes per page.
    pub page_size: u64,
    /// The inode number of the collector's own pid namespace (the host's,
    /// when it runs as it should: on the node, or with `hostPID: true`). A
    /// victim with the same `victim.pid_ns` is in no pid namespace of its
    /// own.
    #[serde(default)]
    pub pid_ns: Option<u64>,
}

impl HostFacts {
    /// Whether the memory controller is on the cgroup2 (default) hierarchy.
    pub fn memory_on_v2(&self) -> bool {
        self.memory_controller
            .as_ref()
            .is_some_and(|m| m.version == 2)
    }
}

/// Which cgroup hierarchies are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Only cgroup v1 hierarchies.
    V1,
    /// cgroup v1 controllers plus a cgroup2 mount (systemd's "hybrid").
    Hybrid,
    /// Only the unified cgroup2 hierarchy.
    V2,
    /// No cgroup filesystem is mounted.
    None,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The hierarchy that carries the memory controller.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct MemoryController {
    /// 1 or 2.
    pub version: u8,
    /// Where it is mounted.
    pub mount: String,
}

/// How one hook attached, or why it did not.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProbeStatus {
    pub name: Hook,
    /// The mode in use, or null when the hook is not attached.
    pub mode: Option<AttachMode>,
    /// Every mode tried, best first, with the error of each that failed.
    pub attempts: Vec<AttachAttempt>,
}

/// A kernel hook oomtrace attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `mark_victim`: one record per OOM victim.
    MarkVictim,
    /// `oom_kill_process`: the OOM's constraint, the memcg whose limit
    /// fired, and the victim's badness.
    OomKillProcess,
    /// `sched_process_exit`: the victim's exit code.
    ProcessExit,
    /// `signal_generate`: the SIGKILLs of `signal_kill` records, the
    /// SIGTERMs before them, and `oom.killed`.
    SignalGenerate,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How a hook is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    RawTracepoint,
    Tracepoint,
    /// fentry with its fexit.
    Fentry,
    /// kprobe with its kretprobe.
    Kprobe,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// One mode tried for a hook.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AttachAttempt {
    pub mode: AttachMode,
    /// Null when this mode attached.
    pub error: Option<String>,
}

/// How the collector runs.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CollectorStatus {
    /// The collector's process id.
    pub pid: u32,
    /// How long a kill waits for its victim's exit before it is written with
    /// `exit.observed = false`.
    pub exit_wait_ms: u64,
    /// How long a victim written without its exit is still watched; an exit
    /// within it becomes a `late_exit` record.
    #[serde(default)]
    pub exit_retention_ms: Option<u64>,
    pub oom_score_adj: SelfSetting,
    pub nice: SelfSetting,
    /// Whether the kernel log is read for each kill's `oom-kill:` line (see
    /// `oom.kernel_log`).
    #[serde(default)]
    pub kernel_log: Option<KernelLogStatus>,
}

/// The collector's reading of /dev/kmsg.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct KernelLogStatus {
    /// True when /dev/kmsg is open and read.
    pub read: bool,
    /// Why it is not: the open's error, or `--no-kernel-log`.
    pub error: Option<String>,
}

/// A setting the collector applies to itself at start: its oom_score_adj
/// (so the OOM killer it records spares it; lowering needs
/// CAP_SYS_RESOURCE) and its nice value (so records keep up while the CPUs
/// are busy with the processes being killed; raising priority needs
/// CAP_SYS_NICE).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SelfSetting {
    /// The value asked for (the `run` flag).
    pub requested: i32,
    /// The value in effect now (/proc/self/oom_score_adj, getpriority(2)).
    pub applied: Option<i32>,
    /// Why the requested value could not be set.
    pub error: Option<String>,
}

/// Records that could not be made since the previous `lost` record. Loss is
/// always reported, never silent.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Lost {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When it was written, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// Kill records the kernel dropped because the ring buffer was full.
    pub kills: u64,
    /// Exit records the kernel dropped; their kills are written with
    /// `exit.observed = false`.
    pub exits: u64,
    /// Victims whose exit could not be tracked (the kernel's victim map was
    /// full).
    pub untracked_victims: u64,
    /// Kernel records the collector read but had no room to process (its
    /// queue between reading and processing was full).
    #[serde(default)]
    pub events_dropped: u64,
    /// Records dropped because the output stayed blocked longer than its
    /// queue could hold.
    #[serde(default)]
    pub records_dropped: u64,
    /// SIGKILLs whose `signal_kill` record the kernel could not write: the
    /// ring buffer was full, or had less than a quarter of it free (kept
    /// for OOM kills, so that a burst of SIGKILLs cannot crowd them out).
    #[serde(default)]
    pub signal_kills: u64,
}

/// Written last, on a stop signal, after every kill read has been written.
/// Not written when the output itself went away (its reader closed the
/// pipe), nor when the output stayed blocked past the 10 s flush deadline
/// at shutdown (stderr then says how many records were not written).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Stop {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When it was written, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The signal that stopped it: any signal whose default action would
    /// end the process (except SIGHUP, which reopens `--output`, and the
    /// faults: SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP).
    pub reason: StopReason,
    pub counters: Counters,
}

/// Written every `--heartbeat-interval` (default 60 s) while the
/// collector runs: it is alive and watching, with its counters so far. A
/// stretch longer than the interval without one (or any record) means the
/// collector was not running, or its records were not kept: silence is
/// not health.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When it was written, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The interval between heartbeats, milliseconds: the next one is due
    /// this long after this one.
    pub interval_ms: u64,
    /// Totals since start, as `stop` will give them.
    pub counters: Counters,
}

/// Why the collector stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StopReason {
    #[serde(rename = "SIGTERM")]
    Sigterm,
    #[serde(rename = "SIGINT")]
    Sigint,
    #[serde(rename = "SIGQUIT")]
    Sigquit,
    #[serde(rename = "SIGUSR1")]
    Sigusr1,
    #[serde(rename = "SIGUSR2")]
    Sigusr2,
    #[serde(rename = "SIGALRM")]
    Sigalrm,
    #[serde(rename = "SIGVTALRM")]
    Sigvtalrm,
    #[serde(rename = "SIGPROF")]
    Sigprof,
    #[serde(rename = "SIGIO")]
    Sigio,
    #[serde(rename = "SIGPWR")]
    Sigpwr,
    #[serde(rename = "SIGSTKFLT")]
    Sigstkflt,
    #[serde(rename = "SIGXCPU")]
    Sigxcpu,
    /// A real-time signal (SIGRTMIN to SIGRTMAX).
    #[serde(rename = "SIGRT")]
    Sigrt,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Totals since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    /// `oom_kill` records written.
    pub kills: u64,
    /// Of those, how many had their exit joined within the exit wait.
    pub exits_observed: u64,
    /// Totals of the `lost` records' `kills`.
    pub lost_kills: u64,
    /// Totals of the `lost` records' `exits`.
    pub lost_exits: u64,
    /// Totals of the `lost` records' `untracked_victims`.
    pub untracked_victims: u64,
    /// `late_exit` records written.
    #[serde(default)]
    pub late_exits: u64,
    /// Kills written without their exit whose victim was still alive when
    /// the collector stopped watching it: after the exit retention, under
    /// pressure on its victim map, or at stop.
    #[serde(default)]
    pub exits_never_seen: u64,
    /// Totals of the `lost` records' `events_dropped`.
    #[serde(default)]
    pub events_dropped: u64,
    /// Totals of the `lost` records' `records_dropped`.
    #[serde(default)]
    pub records_dropped: u64,
    /// `signal_kill` records written.
    #[serde(default)]
    pub signal_kills: u64,
    /// Totals of the `lost` records' `signal_kills`.
    #[serde(default)]
    pub lost_signal_kills: u64,
    /// `container_exit` records written.
    #[serde(default)]
    pub container_exits: u64,
    /// Memcgs the memory sampler stopped following to make room for a new
    /// one at its cap (see docs/schema.md, "memory"): their kills get no
    /// history.
    #[serde(default)]
    pub sampler_evictions: u64,
    /// Memcgs the sampler did not follow at all: its cap was full of memcgs
    /// that all grew within the window.
    #[serde(default)]
    pub sampler_refusals: u64,
    /// `oom_stall` records written with `phase: start`.
    #[serde(default)]
    pub oom_stalls: u64,
}
