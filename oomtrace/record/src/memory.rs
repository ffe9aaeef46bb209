//! The victim's memory cgroup and its ancestors, as the kernel saw them at
//! the kill: usage, limit, and the counters that survive the cgroup.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The victim's memory cgroup, read in the kernel at the kill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Memcg {
    /// Its path (the victim's cgroup on cgroup v1; on v2 the nearest cgroup
    /// with the memory controller enabled). Taken from the victim's cgroup
    /// path, so null when `victim.cgroup.path` is; not UTF-8: as
    /// `victim.cgroup.path`.
    pub path: Option<String>,
    /// As `victim.cgroup.path_hex`, for `path`.
    #[serde(default)]
    pub path_hex: Option<String>,
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2) at the kill.
    pub usage_bytes: u64,
    /// Null when the cgroup has no limit.
    pub limit_bytes: Option<u64>,
    /// The memcg and every ancestor up to the root, leaf first.
    pub levels: Vec<MemcgLevel>,
}

/// One memory cgroup on the way from the victim's up to the root.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct MemcgLevel {
    /// Its path; `/` for the root. As `memcg.path`, null when
    /// `victim.cgroup.path` is.
    pub path: Option<String>,
    /// As `victim.cgroup.path_hex`, for `path`.
    #[serde(default)]
    pub path_hex: Option<String>,
    /// Its usage at the kill.
    pub usage_bytes: u64,
    /// Null when this level has no limit.
    pub limit_bytes: Option<u64>,
    /// `memory.oom.group`: when set (Kubernetes sets it on cgroup v2
    /// containers since 1.28), a kill takes every process under the highest
    /// such level up to the memcg that fired. Null when this kernel's BTF
    /// lacks `mem_cgroup::oom_group`.
    pub oom_group: Option<bool>,
    /// How many charges failed against this level's memory limit since it
    /// was made (`memory.failcnt` on cgroup v1; the page counter's
    /// `failcnt`). On v1 with a memory+swap limit that fires first, the
    /// memory counter's failures stay 0 (`memory.memsw.failcnt` is not
    /// read). Null where the kernel does not count them (the root, and
    /// cgroup v2 memcgs, on kernels whose page counter has `track_failcnt`)
    /// or its BTF lacks the field.
    #[serde(default)]
    pub failcnt: Option<u64>,
    /// The highest usage this level has had (`memory.peak` on v2,
    /// `memory.max_usage_in_bytes` on v1; the page counter's `watermark`).
    /// On v1 it counts since the last write to `max_usage_in_bytes`.
    #[serde(default)]
    pub peak_bytes: Option<u64>,
    /// Its `memory.events` counters at the kill.
    #[serde(default)]
    pub events: Option<MemcgEvents>,
}

/// A memcg's `memory.events` counters (`mem_cgroup::memory_events[]`, by
/// `enum memcg_memory_event`), read in the kernel at the kill: exact even
/// for a cgroup created and removed between two looks at its files. On
/// cgroup v2 they are hierarchical, as `memory.events` shows them (a level
/// counts its descendants' events); on v1 the kernel counts them too, for
/// the memcg itself only (v1's `memory.oom_control` shows `oom_kill` from
/// them). They are read at
/// `mark_victim`, which the kernel reaches after counting this kill:
/// `oom_kill` includes it. Each is null where this kernel lacks the event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MemcgEvents {
    /// Usage went over `memory.high` (throttled, not killed).
    pub high: Option<u64>,
    /// A charge hit `memory.max` (reclaim was tried).
    pub max: Option<u64>,
    /// Reclaim failed at the limit and the OOM path was entered.
    pub oom: Option<u64>,
    /// Processes killed by the OOM killer in this memcg or below.
    pub oom_kill: Option<u64>,
    /// Kills of a whole group (`memory.oom.group`); 5.16+.
    pub oom_group_kill: Option<u64>,
}

/// A memcg's `memory.stat` as the kernel printed it in its OOM report
/// (mem_cgroup_print_oom_meminfo(): `Memory cgroup stats for PATH:` and one
/// `name value` line per field), read from /dev/kmsg at the kill. Exact at
/// the kill, even for a cgroup born and killed between two samples, and
/// for fields the sampler does not keep.
///
/// The fields are the kernel's own, by name: on cgroup v2 those of
/// `memory.stat` (`anon`, `file`, `kernel`, `shmem`, `active_file`,
/// `pgfault`, … in bytes or event counts), on cgroup v1 those of v1's
/// `memory.stat` (`cache`, `rss`, … and the hierarchical `total_*`).
/// Kernels before 6.4 print the v2 fields on v1 too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KernelStat {
    /// The memcg the kernel printed the stats for (`oom.memcg_path`).
    pub path: String,
    /// Every `name value` line, by name (`jq .oom.kernel_stat.fields.anon`).
    pub fields: std::collections::BTreeMap<String, u64>,
}
