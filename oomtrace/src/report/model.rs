//! `oomtrace report --json`: the analysis as one JSON document. Its JSON
//! Schema is `oomtrace report --json-schema`. Sizes are bytes, times RFC
//! 3339 UTC as the records give them, durations seconds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

/// The version of this document's layout.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct Report {
    /// Always 1 in this version of the document.
    pub report_version: u32,
    pub input: InputSummary,
    /// The first record time seen (after the filters).
    pub first: Option<String>,
    /// The last record time seen (after the filters).
    pub last: Option<String>,
    /// Every 137, by cause.
    pub causes: Causes,
    /// One entry per container, pod container or cgroup with a kill, most
    /// kills first.
    pub subjects: Vec<Subject>,
    /// Kills that took one process and left its container running: the
    /// runtime and Kubernetes report none of them.
    pub child_kills: Vec<ChildKill>,
    /// Node-wide (global) OOM kills, kept apart from memcg limits.
    pub node_ooms: Vec<NodeOom>,
    /// Per node: collector runs, restarts, gaps and losses, so that silence
    /// is not read as health.
    pub nodes: Vec<Node>,
    /// Subjects beyond the report's cap (kills counted in `causes` only).
    pub subjects_dropped: u64,
}

/// What was read, and what was skipped.
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct InputSummary {
    /// Files (or stdin) read.
    pub sources: u64,
    /// Lines read (a split line's pieces count one each).
    pub lines: u64,
    /// oomtrace records read, duplicates included.
    pub records: u64,
    /// Records by `type`, after dedupe and filters.
    pub by_type: BTreeMap<String, u64>,
    /// Records seen more than once (same host, boot, run, seq): counted once.
    pub duplicates: u64,
    /// Lines of other programs, skipped.
    pub other_lines: u64,
    /// Lines that claimed to be records and were not (`file:line: reason`
    /// on stderr), skipped.
    pub malformed: u64,
    /// Lines longer than the maximum (1 MiB), skipped.
    pub too_long: u64,
    /// Sources that ended in a read error (a truncated gzip, an I/O
    /// error): read up to it.
    pub read_errors: u64,
    /// Records of a schema newer than this oomtrace's: read for what it
    /// knows.
    pub newer_schema: u64,
    /// Record types this oomtrace does not know, by name.
    pub unknown_types: BTreeMap<String, u64>,
    /// Records left out by `--since/--until/--node/--namespace/--pod/--container`.
    pub filtered_out: u64,
}

/// Deaths by SIGKILL (exit 137), by who killed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Causes {
    /// The kernel OOM killer, enforcing a memory cgroup's limit.
    pub kernel_oom_memcg: u64,
    /// The kernel OOM killer, the whole node being out of memory (or a
    /// cpuset/mempolicy constraint).
    pub kernel_oom_node: u64,
    /// A userspace OOM killer (earlyoom, systemd-oomd, oomd, nohang).
    pub userspace_oom_killer: u64,
    /// A container runtime or the kubelet after its SIGTERM (a stop
    /// timeout), or without one.
    pub runtime_stop: u64,
    /// Any other SIGKILL: a person, a script, `cgroup.kill`, the kernel.
    pub other_sigkill: u64,
}

impl Causes {
    pub fn total(&self) -> u64 {
        self.kernel_oom_memcg
            + self.kernel_oom_node
            + self.userspace_oom_killer
            + self.runtime_stop
            + self.other_sigkill
    }
}

/// What a subject is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A Kubernetes pod's container (named `namespace/pod/container`): its
    /// restarts keep the name.
    Pod,
    /// A container of Docker, Podman or containerd (by name, else id).
    Container,
    /// A systemd unit.
    Unit,
    /// Any other cgroup (`node:path`).
    Cgroup,
}

/// One container, pod container or cgroup, and what happened to it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Subject {
    pub kind: SubjectKind,
    /// How the text report names it.
    pub name: String,
    /// The nodes (hostnames) it was killed on.
    pub nodes: Vec<String>,
    /// Container ids seen (a pod's container gets a new one per restart),
    /// at most 16.
    pub container_ids: Vec<String>,
    /// The container's image (the latest).
    pub image: Option<String>,
    /// The pod's Kubernetes namespace.
    pub namespace: Option<String>,
    /// The pod's name (the latest).
    pub pod: Option<String>,
    /// The pod's QoS class (`guaranteed`, `burstable`, `besteffort`).
    pub qos: Option<String>,
    /// The victim's cgroup path (the latest).
    pub cgroup: Option<String>,
    /// Every 137 of this subject, by cause.
    pub causes: Causes,
    /// Kernel OOM kills (`causes.kernel_oom_memcg + kernel_oom_node`).
    pub kills: u64,
    /// Its first kill's time.
    pub first: Option<String>,
    /// Its last kill's time.
    pub last: Option<String>,
    /// Victims' task names, most kills first, at most 8.
    pub victims: Vec<String>,
    /// Task names whose allocation triggered the kills, at most 8.
    pub triggers: Vec<String>,
    /// The limit that fired, at the latest kill, and whose it was.
    pub limit_bytes: Option<u64>,
    /// Whose limit that was (`container`, `pod`, `cgroup`, `node`).
    pub limit_scope: Option<String>,
    /// The memory cgroup whose limit fired.
    pub limit_memcg: Option<String>,
    /// The largest victim RSS (anon + file + shmem) at a kill.
    pub max_rss_bytes: Option<u64>,
    /// The largest working set (usage − inactive file) sampled before a
    /// kill.
    pub max_working_set_bytes: Option<u64>,
    /// The growth verdict of the latest kill that has one (`leak`,
    /// `spike`, `shmem`, `at_limit`), else `unknown`.
    pub growth: String,
    /// Its slope, bytes per second.
    pub growth_slope_bytes_per_s: Option<f64>,
    /// Kills whose victim was the container's PID 1 (or took it all down).
    pub container_died: u64,
    /// Kills of a lesser process, the container carrying on.
    pub child_killed: u64,
    /// The densest run of kills, when it makes a crash loop
    /// (`--loop-count` kills within `--loop-window`).
    pub crash_loop: Option<CrashLoop>,
    /// The one thing to do.
    pub advice: Advice,
    /// Its kills (kernel OOM and userspace OOM killer), oldest first, at
    /// most 1,024 (`timeline_dropped` says how many more): for the crash
    /// loop check and the chart.
    pub timeline: Vec<KillMark>,
    /// Kills past the timeline's cap.
    pub timeline_dropped: u64,
}

/// One kill on a subject's timeline.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct KillMark {
    /// When the kill was.
    pub time: String,
    /// `kernel_oom_memcg`, `kernel_oom_node` or `userspace_oom_killer`.
    pub cause: String,
    /// The limit that fired (null for a node OOM).
    pub limit_bytes: Option<u64>,
    /// The record's `memory.history` (`[ms_before_kill, usage, anon,
    /// file]`, oldest first), kept for the first 8 kills of a subject that
    /// have one; empty for the others.
    pub history: Vec<[u64; 4]>,
}

/// The same subject killed `kills` times within `window_s`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct CrashLoop {
    /// The most kills inside one window.
    pub kills: u64,
    /// The window, seconds (`--loop-window`).
    pub window_s: f64,
    /// When that window's first kill was.
    pub from: String,
    /// When that window's last kill was.
    pub to: String,
    /// Seconds between its consecutive kills.
    pub intervals_s: Vec<f64>,
}

/// What to do, from the evidence, in one line.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Advice {
    /// What to do, as a word for scripts.
    pub action: Action,
    /// What to do and why, in one line (with the number to set, for
    /// `raise_limit`).
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Memory grew steadily to the limit.
    FixLeak,
    /// Flat, then a jump to the limit: one request or batch.
    BoundBatch,
    /// tmpfs / shared memory filled the limit.
    BoundShmem,
    /// Sized at its limit: raise it above the working set.
    RaiseLimit,
    /// A node OOM took a BestEffort or Burstable pod: requests = limits.
    GuaranteedQos,
    /// A userspace OOM killer acted, not the kernel.
    UserspaceKiller,
    /// The runtime killed it after its stop timeout.
    StopTimeout,
    /// Not enough evidence for a verdict.
    Investigate,
}

/// One kill whose container kept running.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ChildKill {
    /// The container (subject name) that kept running.
    pub subject: String,
    /// The node (hostname).
    pub node: Option<String>,
    /// When the kill was.
    pub time: String,
    /// The killed process's pid (in the host's namespace).
    pub pid: Option<u32>,
    /// The killed process's task name.
    pub comm: Option<String>,
}

/// One node-wide OOM kill.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct NodeOom {
    /// The node (hostname).
    pub node: Option<String>,
    /// When the kill was.
    pub time: String,
    /// The victim's subject name.
    pub subject: String,
    /// The victim's task name.
    pub comm: Option<String>,
    /// The victim's pod's QoS class.
    pub qos: Option<String>,
}

/// One node's collector: how well it watched.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct Node {
    /// The records' `hostname`.
    pub hostname: String,
    /// Boots seen (`boot_id`s).
    pub boots: u64,
    /// Collector runs seen (`run_id`s).
    pub runs: u64,
    /// `heartbeat` records: 0 when the collectors wrote none (older, or
    /// `--heartbeat-interval 0`), and then silence cannot be told from
    /// health between other records.
    pub heartbeats: u64,
    /// Runs with no `stop` record: the collector was killed, crashed, or
    /// its last records were not kept.
    pub runs_without_stop: u64,
    /// Kernel OOM kills on the node.
    pub oom_kills: u64,
    /// Of which node-wide (global) OOMs.
    pub node_ooms: u64,
    /// Kills the kernel could not queue (`lost.kills`).
    pub lost_kills: u64,
    /// Other losses (exits, events and records dropped).
    pub lost_other: u64,
    /// Victims that exited after their kill was written (`late_exit`).
    pub late_exits: u64,
    /// Kills whose victim's exit was never seen.
    pub exits_unseen: u64,
    /// OOMs that killed nobody (`oom_stall` starts): tasks hung at a limit.
    pub oom_stalls: u64,
    /// Stretches in which no collector watched, or none is known to have:
    /// the 64 longest, in time order.
    pub gaps: Vec<Gap>,
    /// How many gaps there were in all.
    pub gaps_total: u64,
    /// The gaps' total length, seconds.
    pub gap_seconds: f64,
}

/// A stretch without a watching collector.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Gap {
    /// When it began.
    pub from: String,
    /// When it ended.
    pub to: String,
    /// Its length.
    pub seconds: f64,
    /// `stopped` (a `stop` record, then a later `start`), `no_stop` (a run
    /// ended without `stop`: from its last record to the next `start`), or
    /// `silent` (no heartbeat or record for longer than expected).
    pub kind: String,
}
