//! `rank_process` and `rank_memcg`: what `oomtrace rank --json` writes, one
//! line per process and per memory cgroup with a limit, all of one pass
//! sharing its `time`.
//!
//! The ranking follows mm/oom_kill.c: a task's badness is its resident
//! pages (anon + file + shmem) plus its swap entries plus its page tables
//! in pages, plus `oom_score_adj × (totalpages / 1000)` (integer division
//! first, as the kernel does it), and the OOM killer kills the highest.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Container, K8s, Origin,
    text::{opt, opt_bytes, opt_plain, plain, quoted, spelled},
};

/// One process as `oomtrace rank` saw it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RankProcess {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// When the pass that read it started, RFC 3339 UTC with nanoseconds
    /// (the same in every record of one pass).
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The process id (in the pid namespace of /proc as mounted for
    /// `rank`: the host's on a node).
    pub pid: u32,
    /// The process name (`Name:` of /proc/PID/status, escaped as the kernel
    /// escapes it there).
    pub comm: String,
    /// /proc/PID/oom_score (0 to 2000): the kernel's own node-wide score.
    /// Null when it could not be read.
    pub oom_score: Option<u64>,
    /// /proc/PID/oom_score_adj (-1000 to 1000). Null when unreadable.
    pub oom_score_adj: Option<i32>,
    /// Resident memory by kind (`RssAnon`, `RssFile`, `RssShmem` of
    /// /proc/PID/status). Null for a task without memory (kernel thread,
    /// zombie) and when status could not be read.
    pub rss_anon_bytes: Option<u64>,
    /// Resident file pages (`RssFile`): binaries, libraries, mapped files.
    pub rss_file_bytes: Option<u64>,
    /// Resident shared memory and tmpfs pages (`RssShmem`).
    pub rss_shmem_bytes: Option<u64>,
    /// Swapped-out pages (`VmSwap`).
    pub swap_bytes: Option<u64>,
    /// Page tables (`VmPTE`).
    pub page_tables_bytes: Option<u64>,
    /// The badness the kernel would give it in a node-wide (global) OOM,
    /// in pages: rss + swap + page tables, plus adj × (totalpages / 1000)
    /// with totalpages = RAM + swap. Null when the kernel would not
    /// consider it (`skipped` says why).
    pub node_badness: Option<i64>,
    /// Its place in the node-wide order, 1 = the next victim of a global
    /// OOM. Tasks of equal badness share a place. Null when skipped.
    pub node_rank: Option<u32>,
    /// Why the kernel's OOM killer would never pick it; null when it could.
    pub skipped: Option<RankSkip>,
    /// Its memory cgroup's path from the hierarchy's root, as
    /// /proc/PID/cgroup shows it. Null when unreadable.
    pub memcg_path: Option<String>,
    /// The container its cgroup path names, as in `oom_kill`.
    pub container: Option<Container>,
    /// The Kubernetes pod its cgroup path names, as in `oom_kill`.
    pub k8s: Option<K8s>,
    /// The innermost systemd unit in its cgroup path.
    pub systemd_unit: Option<String>,
    /// The /proc files of this process that could not be read (permission,
    /// or the process exited during the pass), as `status: Permission
    /// denied`. Empty when everything was read.
    pub unreadable: Vec<String>,
}

/// Why the OOM killer passes a task over (mm/oom_kill.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RankSkip {
    /// `oom_score_adj` is -1000 (OOM_SCORE_ADJ_MIN): never killed.
    AdjMin,
    /// No memory of its own: a kernel thread, or a process that already
    /// released its memory (zombie).
    NoMemory,
    /// The global init (pid 1), which `oom_unkillable_task` excludes.
    Init,
    /// Its figures could not be read: it cannot be ranked.
    Unreadable,
    /// A value from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// One memory cgroup with a limit of its own, and who would die in it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RankMemcg {
    /// Always 1 in this version of the format.
    pub schema: u32,
    #[serde(flatten)]
    pub origin: Origin,
    /// As in `rank_process`: the start of the pass.
    pub time: String,
    /// The same instant in CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The memcg's path from the hierarchy's root.
    pub path: String,
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2). Null when
    /// unreadable.
    pub usage_bytes: Option<u64>,
    /// Its own limit: `memory.limit_in_bytes` (v1) / `memory.max` (v2).
    pub limit_bytes: u64,
    /// `limit_bytes - usage_bytes` (0 at or over the limit).
    pub headroom_bytes: Option<u64>,
    /// `headroom_bytes` in percent of `limit_bytes`.
    pub headroom_percent: Option<f64>,
    /// `usage_bytes` less inactive file pages (`total_inactive_file` on v1,
    /// `inactive_file` on v2): what cannot be reclaimed easily, as kubelet
    /// and cAdvisor count it.
    pub working_set_bytes: Option<u64>,
    /// The kernel's totalpages for an OOM of this memcg
    /// (`mem_cgroup_get_max`): the limit in pages, plus the swap it may use
    /// (at most the node's swap) when its swappiness is not 0.
    pub total_pages: u64,
    /// Processes in it and in its descendants (whose tasks the kernel
    /// scans in a memcg OOM).
    pub processes: u32,
    /// The task the kernel would kill if this memcg hit its limit now.
    /// Null when no task in it could be killed.
    pub next_victim: Option<RankCandidate>,
    /// Other tasks with exactly the victim's badness: the kernel picks
    /// among them by its task-iteration order, which /proc does not show.
    pub tied_with: Vec<RankCandidate>,
    /// The next task after the victim (and its ties).
    pub runner_up: Option<RankCandidate>,
    /// Victim's badness minus runner-up's, in pages: a small margin can
    /// flip between the sample and the OOM.
    pub margin_pages: Option<i64>,
    /// Every task the kernel could kill here, in kill order (highest
    /// badness first; equal badness in pid order). Cut to `--top`.
    pub order: Vec<RankCandidate>,
    /// The container its path names.
    pub container: Option<Container>,
    /// The Kubernetes pod its path names.
    pub k8s: Option<K8s>,
}

/// A task as a victim candidate in a memcg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RankCandidate {
    /// The process id.
    pub pid: u32,
    /// The process name, as in `rank_process`.
    pub comm: String,
    /// Its /proc/PID/oom_score_adj.
    pub oom_score_adj: i32,
    /// Its badness in this memcg's OOM, in pages (with the memcg's
    /// totalpages).
    pub badness: i64,
}

impl RankProcess {
    /// The record as one line of `oomtrace run --format text`-style text.
    pub fn text_line(&self) -> String {
        let rss = [
            self.rss_anon_bytes,
            self.rss_file_bytes,
            self.rss_shmem_bytes,
        ]
        .iter()
        .try_fold(0u64, |sum, part| part.map(|p| sum + p));
        format!(
            "{} rank pid {} {} node rank {} (badness {} pages, oom_score {}, adj {}) rss {} swap {} \
             page tables {}{} memcg {}",
            self.time,
            self.pid,
            quoted(Some(&self.comm)),
            opt(self.node_rank),
            opt(self.node_badness),
            opt(self.oom_score),
            opt(self.oom_score_adj),
            opt_bytes(rss),
            opt_bytes(self.swap_bytes),
            opt_bytes(self.page_tables_bytes),
            self.skipped
                .map(|s| format!(" skipped: {}", spelled(s)))
                .unwrap_or_default(),
            opt_plain(self.memcg_path.as_deref()),
        )
    }
}

impl RankMemcg {
    /// The record as one line of text.
    pub fn text_line(&self) -> String {
        let victim = self.next_victim.as_ref().map_or_else(
            || "none".to_string(),
            |v| {
                format!(
                    "pid {} {} ({} pages)",
                    v.pid,
                    quoted(Some(&v.comm)),
                    v.badness
                )
            },
        );
        format!(
            "{} rank memcg {} usage {} of {} (headroom {}) working set {}: next victim {}{}",
            self.time,
            plain(&self.path),
            opt_bytes(self.usage_bytes),
            opt_bytes(Some(self.limit_bytes)),
            opt_bytes(self.headroom_bytes),
            opt_bytes(self.working_set_bytes),
            victim,
            if self.tied_with.is_empty() {
                String::new()
            } else {
                format!(", tied with {}", self.tied_with.len())
            },
        )
    }
}
