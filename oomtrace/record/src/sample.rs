//! `oom_kill.memory`: the memory of the victim's cgroup in the seconds
//! before the kill, from the collector's own sampling (`oomtrace run
//! --sample-interval`), and what its shape says about the kill.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::text::{human_bytes, spelled};

/// What the collector's sampler saw of the victim's memory cgroup before
/// the kill. Every figure is from a sample taken *before* the kill (none is
/// read after it, when the victim's memory is already being freed). A
/// cgroup born and killed between two samples has no sample: then `stat`
/// is null, `history` empty and `growth.kind` `unknown`, never a guess.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Memory {
    /// The victim's memcg (`memcg.path`) in the latest sample before the
    /// kill; null when it was never sampled.
    pub stat: Option<MemoryStat>,
    /// The memcg whose limit fired (`oom.memcg_path`) in its latest sample
    /// before the kill, when it is another memcg than the victim's (a pod's
    /// or a parent's limit); null when it is the same, unknown, or was
    /// never sampled.
    pub fired_stat: Option<MemoryStat>,
    /// `stat.usage_bytes - stat.inactive_file_bytes` (0 when negative), as
    /// the kubelet computes a container's working set for its eviction
    /// decisions and `kubectl top`. Null when `stat` is.
    pub working_set_bytes: Option<u64>,
    /// Memory pressure (PSI) in the latest sample before the kill; null
    /// when PSI is off or was never read.
    pub pressure: Option<Pressure>,
    /// The path of the memcg that `history` and `growth` are about: the
    /// memcg whose limit fired when it was sampled, else the victim's.
    /// Null when neither was sampled.
    pub history_path: Option<String>,
    /// That memcg's samples before the kill within the sampler's window
    /// (`--sample-window`), oldest first, each
    /// `[ms_before_kill, usage_bytes, anon_bytes, file_bytes]`. Empty when
    /// it was never sampled.
    pub history: Vec<[u64; 4]>,
    pub growth: Growth,
}

/// One memcg's `memory.stat` and usage, as sampled.
///
/// On cgroup v2 the fields are `memory.current` and the `memory.stat`
/// fields of the same name. On cgroup v1 they are the hierarchical
/// `total_*` fields (a memcg's own and its descendants', as v2 counts):
/// `anon` is `total_rss` (anonymous and swap cache, transparent huge pages
/// included), `file` is `total_cache` (page cache, tmpfs and shmem
/// included, as v2's `file`), `shmem` `total_shmem`, the file LRUs
/// `total_active_file` and `total_inactive_file`; v1 has no `kernel` and
/// no `slab` there (null).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryStat {
    /// The memcg's path, as `memcg.path`.
    pub path: String,
    /// Milliseconds from the sample to the kill.
    pub age_ms: u64,
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2).
    pub usage_bytes: u64,
    /// Anonymous memory (heap, stacks, private mappings).
    pub anon_bytes: Option<u64>,
    /// Page cache, tmpfs and shared memory included.
    pub file_bytes: Option<u64>,
    /// The active file LRU: page cache used recently, hard to reclaim.
    pub active_file_bytes: Option<u64>,
    /// The inactive file LRU: page cache the kernel reclaims first.
    pub inactive_file_bytes: Option<u64>,
    /// tmpfs and shared memory (a part of `file_bytes`): without swap,
    /// reclaim cannot free it, and killing a process frees only what it
    /// alone mapped.
    pub shmem_bytes: Option<u64>,
    /// Kernel memory charged to the memcg (v2 `kernel`; null on v1 and on
    /// kernels before 5.18).
    pub kernel_bytes: Option<u64>,
    /// Slab memory (v2 `slab`; null on v1).
    pub slab_bytes: Option<u64>,
}

/// Pressure stall information for memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Pressure {
    /// Whose pressure: the victim's memcg's own `memory.pressure` (cgroup
    /// v2), or the whole system's `/proc/pressure/memory` (cgroup v1, where
    /// memcgs have none).
    pub source: PressureSource,
    /// Percent of the last 10 s in which at least one task stalled on
    /// memory.
    pub some_avg10: f64,
    /// Percent of the last 10 s in which every non-idle task stalled on
    /// memory at once.
    pub full_avg10: f64,
}

/// Whose pressure figures these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PressureSource {
    /// The victim's memcg's `memory.pressure`.
    Cgroup,
    /// `/proc/pressure/memory`: every task of the system.
    System,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How the memory grew to the limit, from `history` and the usage at the
/// kill (`memcg.levels`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Growth {
    pub kind: GrowthKind,
    /// The least-squares slope of the usage over `history`, bytes per
    /// second. Null with fewer than 3 samples.
    pub slope_bytes_per_s: Option<f64>,
    /// At that slope, the seconds the latest sample had left before the
    /// limit (of the memcg in `history_path`). Null when the slope is not
    /// positive or the memcg has no limit.
    pub seconds_to_limit: Option<f64>,
}

impl Default for Growth {
    fn default() -> Self {
        Self {
            kind: GrowthKind::Unknown,
            slope_bytes_per_s: None,
            seconds_to_limit: None,
        }
    }
}

/// The shape of the usage before the kill. The thresholds are in the
/// collector (`pipeline/sampler/growth.rs`) and docs/schema.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrowthKind {
    /// Steady growth up to the limit: raising the limit only delays the
    /// next kill.
    Leak,
    /// A flat stretch, then a jump to the limit within a few samples: one
    /// request or batch that overshoots (stream it, or bound it).
    Spike,
    /// Most of the charge is tmpfs/shared memory while anonymous memory is
    /// small: killing processes frees little of it, and without swap
    /// reclaim cannot.
    Shmem,
    /// The usage sat at the limit for the last samples: a workload sized at
    /// its limit.
    AtLimit,
    /// Too few samples, or a shape none of the above fits (also a value
    /// from a newer oomtrace, when read).
    #[serde(other)]
    Unknown,
}

impl Memory {
    /// For `--format text`: ` growth leak 1.2MiB/s`, ` growth spike`; empty
    /// when the kind is unknown.
    pub fn growth_text(&self) -> String {
        let growth = &self.growth;
        if growth.kind == GrowthKind::Unknown {
            return String::new();
        }
        let mut text = format!(" growth {}", spelled(growth.kind));
        if let Some(slope) = growth
            .slope_bytes_per_s
            .filter(|s| *s > 0.0 && s.is_finite())
        {
            let _ = write!(text, " {}/s", human_bytes(slope as u64));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_text_when_known() {
        let mut memory = Memory::default();
        assert_eq!(memory.growth_text(), "", "unknown is left out");
        memory.growth.kind = GrowthKind::Leak;
        memory.growth.slope_bytes_per_s = Some(1.2 * 1048576.0);
        assert_eq!(memory.growth_text(), " growth leak 1.2MiB/s");
        memory.growth.kind = GrowthKind::AtLimit;
        memory.growth.slope_bytes_per_s = Some(-5.0);
        assert_eq!(memory.growth_text(), " growth at_limit");
    }
}
