//! `oom_stall`: a memory cgroup at its limit whose OOM kills nobody, so
//! that its tasks hang instead of dying (seed 000's "invisible OOM").
//!
//! Two records per stall: `phase: start` once the stall has lasted two
//! samples of the collector's memory sampler, and `phase: end` when it is
//! over, with its duration.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::fmt::Write as _;

use crate::{
    Container, K8s, Origin,
    text::{opt, opt_bytes, opt_plain, place_text, plain, quoted, spelled},
};

/// An OOM that kills nobody, at its start or at its end.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct OomStall {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When this record's phase was seen: for `start`, the second sample
    /// that found the memcg stalled; for `end`, the first that found it no
    /// longer stalled (or gone). RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// `start`: stalled for two samples in a row; `end`: no longer.
    pub phase: StallPhase,
    /// Why the OOM killed nobody.
    pub cause: StallCause,
    /// The stalled memcg's path from its hierarchy's root, as `memcg.path`
    /// in `oom_kill`: the memcg whose limit was hit (on v1 the kernel marks
    /// its descendants too; they are not reported on their own).
    pub path: String,
    /// The first sample that found it stalled, in CLOCK_BOOTTIME
    /// nanoseconds. The stall began at most one sample interval before when
    /// the sampler already followed the memcg and (v2) had read its
    /// `memory.events` near the limit in the sample before; a memcg is
    /// followed from the first walk after it got a process (walks are every
    /// 3 samples), so a memcg that stalls at once is seen up to 5 intervals
    /// late.
    pub since_boot_ns: u64,
    /// `end` only: from `since_boot_ns` to this record's `boot_ns`, in ms
    /// (exact to one sample interval). Null in `start`.
    pub duration_ms: Option<u64>,
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2) in the sample
    /// of this record. Null in the `end` of a memcg that was removed.
    pub usage_bytes: Option<u64>,
    /// The limit that was hit: v1 `hierarchical_memory_limit` from
    /// `memory.stat` (the lowest of its own and its ancestors'), v2
    /// `memory.max`. Null when it could not be read, and in the `end` of a
    /// memcg that was removed.
    pub limit_bytes: Option<u64>,
    /// v2: how many OOMs `memory.events` counted (`oom`) in the stall so far
    /// (all without a kill). Null on v1, which has no such counter.
    pub ooms: Option<u64>,
    /// The processes in the memcg and its descendants when the record was
    /// made, at most 32 (see `tasks_total`): who is stuck.
    pub tasks: Vec<StuckTask>,
    /// How many processes the memcg held in all; more than `tasks` lists
    /// when over 32.
    pub tasks_total: u64,
    /// The container, from the memcg's path, as in `oom_kill`.
    pub container: Option<Container>,
    /// The Kubernetes pod, when the memcg is a kubelet pod's or one of its
    /// containers'.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in the path, as in `oom_kill`.
    pub systemd_unit: Option<String>,
}

impl OomStall {
    /// The `--format text` line.
    pub fn text_line(&self) -> String {
        let s = self;
        let what = match s.phase {
            StallPhase::Start => "OOM stall: nobody killed".to_string(),
            StallPhase::End => format!("OOM stall over after {} ms", opt(s.duration_ms)),
            StallPhase::Unknown => "OOM stall".to_string(),
        };
        let mut line = format!(
            "{} {what}: memcg {} ({}) usage {} limit {}",
            s.time,
            plain(&s.path),
            spelled(s.cause),
            opt_bytes(s.usage_bytes),
            opt_bytes(s.limit_bytes),
        );
        line.push_str(&place_text(
            s.k8s.as_ref(),
            s.container.as_ref(),
            s.systemd_unit.as_deref(),
        ));
        if let Some(ooms) = s.ooms {
            let _ = write!(line, " ooms {ooms}");
        }
        let tasks: Vec<String> = s
            .tasks
            .iter()
            .map(|t| {
                format!(
                    "{} {} {} adj {}",
                    t.pid,
                    quoted(t.comm.as_deref()),
                    opt_plain(t.state.as_deref()),
                    opt(t.oom_score_adj)
                )
            })
            .collect();
        let _ = write!(line, " tasks {}: {}", s.tasks_total, tasks.join(", "));
        line
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StallPhase {
    /// The memcg has been stalled for two samples in a row.
    Start,
    /// It is no longer: its usage left the limit (the limit was raised,
    /// memory was freed, a task was killed by someone else), or the memcg
    /// was removed.
    End,
    /// A phase from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Why the OOM killed nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StallCause {
    /// cgroup v1 with `memory.oom_control` `oom_kill_disable 1`: the
    /// kernel marks the memcg `under_oom 1` and parks the charging tasks
    /// until memory is freed or the limit raised.
    OomKillDisabled,
    /// cgroup v2 (which has no such switch): `memory.events` counts `oom`
    /// again and again without `oom_kill`, because the OOM killer found no
    /// task it may kill (all at `oom_score_adj` -1000, or already dying).
    /// The charging tasks retry their page faults at the limit.
    NoKillableTask,
    /// cgroup v1 `under_oom 1` with the OOM killer enabled: the kernel
    /// found no task to kill (all at `oom_score_adj` -1000).
    UnderOom,
    /// A cause from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// One process in a stalled memcg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StuckTask {
    /// Its pid in the collector's pid namespace (`cgroup.procs`).
    pub pid: u32,
    /// `/proc/PID/comm`; null when it exited before it was read.
    pub comm: Option<String>,
    /// The state letter of `/proc/PID/stat`: `D` (uninterruptible: parked
    /// by v1's OOM handling), `R` (running: retrying its fault), `S`
    /// (sleeping, not charging). Null as `comm`.
    pub state: Option<String>,
    /// `/proc/PID/oom_score_adj`; null as `comm`.
    pub oom_score_adj: Option<i16>,
}
