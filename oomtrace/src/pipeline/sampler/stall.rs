//! OOMs that kill nobody (`oom_stall` records), seen by the sampler.
//!
//! A memcg at its limit whose OOM killer may not kill leaves its charging
//! tasks stuck, and no tracepoint fires: `oom:mark_victim` needs a victim.
//! - cgroup v1 with `memory.oom_control` `oom_kill_disable 1`: the kernel
//!   (mm/memcontrol-v1.c, `memcg1_oom_prepare` and
//!   `mem_cgroup_oom_synchronize`) marks the memcg and its descendants
//!   `under_oom` and parks the faulting tasks until memory is freed or the
//!   limit raised. The same mark shows when the OOM killer is on but finds
//!   no task it may kill.
//! - cgroup v2 has no switch, but a memcg whose every task is at
//!   `oom_score_adj` -1000 gets the same effect: `mem_cgroup_oom()` counts
//!   `MEMCG_OOM` (memory.events `oom`), `out_of_memory()` finds no victim
//!   and no `oom_kill` is counted; the fault fails with VM_FAULT_OOM and
//!   `pagefault_out_of_memory()` retries it, again and again.
//!
//! The sampler opens `memory.oom_control` (v1) or `memory.events` (v2)
//! only for a memcg near its limit ([`near_limit`]) or already suspected:
//! a stalled memcg sits at its limit, and reading one more file of every
//! memcg at every sample would cost more than all the rest. A stall is
//! reported once it has been seen in two samples in a row ([`Watch`]).

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    path::Path,
    sync::{Arc, Mutex},
};

use oomtrace_record::{OomStall, Origin, SCHEMA_VERSION, StallCause, StallPhase, StuckTask};

use super::{Sampled, files::CgroupFiles, files::Version, lock};
use crate::kernel::clock::rfc3339_from_boot_ns;

/// Records waiting for the pipeline, at most: a pipeline that stopped
/// taking them must not make the sampler grow.
const MAX_PENDING: usize = 1024;

/// The stall detectors of every memcg near its limit, and the records
/// they made.
pub struct Stalls {
    version: Version,
    watches: HashMap<String, Watch>,
    out: Arc<Mutex<Vec<OomStall>>>,
}

impl Stalls {
    pub fn new(version: Version, out: Arc<Mutex<Vec<OomStall>>>) -> Self {
        Self {
            version,
            watches: HashMap::new(),
            out,
        }
    }

    /// Takes one sample round: `points` read, `gone` (memcgs whose files
    /// failed: removed).
    pub fn check(
        &mut self,
        points: &[(&String, Sampled)],
        files: &HashMap<String, CgroupFiles>,
        gone: &[String],
        now: u64,
    ) {
        let mut made = Vec::new();
        let mut transitions = Vec::new();
        for (path, sampled) in points {
            let watched = self.watches.get(*path).is_some_and(|w| !w.is_idle());
            let usage = sampled.point.usage;
            let state = match files.get(*path) {
                Some(files) if watched || near_limit(usage, sampled.limit) => {
                    read_oom_state(files.dir(), self.version)
                }
                _ => None,
            };
            if state.is_none() && !watched {
                self.watches.remove(*path);
                continue;
            }
            let watch = self.watches.entry((*path).clone()).or_default();
            let before = (watch.since_ns(), watch.ooms(self.version));
            let at = sampled.point.boot_ns;
            if let Some(transition) = watch.observe(at, state) {
                transitions.push((path.as_str(), transition, before, at, usage, sampled.limit));
            }
        }
        for (path, transition, before, at, usage, limit) in transitions {
            let folded = self.under_stalled_ancestor(path);
            let Some(watch) = self.watches.get_mut(path) else {
                continue;
            };
            let (since, ooms, phase) = match transition {
                Transition::Started if !folded => {
                    watch.reported = true;
                    (
                        watch.since_ns(),
                        watch.ooms(self.version),
                        StallPhase::Start,
                    )
                }
                Transition::Ended if watch.reported => {
                    watch.reported = false;
                    (before.0, before.1, StallPhase::End)
                }
                _ => continue,
            };
            let dir = files.get(path).map(|f| f.dir());
            let seen = Seen {
                phase,
                cause: watch.cause(),
                since_ns: since.unwrap_or(at),
                at_ns: at,
                usage: Some(usage),
                limit,
                ooms,
            };
            made.push(record(path, dir, seen));
        }
        for path in gone {
            if let Some(watch) = self.watches.remove(path)
                && watch.reported
            {
                let seen = Seen {
                    phase: StallPhase::End,
                    cause: watch.cause(),
                    since_ns: watch.since_ns().unwrap_or(now),
                    at_ns: now,
                    usage: None,
                    limit: None,
                    ooms: watch.ooms(self.version),
                };
                made.push(record(path, None, seen));
            }
        }
        self.watches.retain(|_, watch| !watch.is_idle());
        if !made.is_empty() {
            let mut out = lock(&self.out);
            let room = MAX_PENDING.saturating_sub(out.len());
            if made.len() > room {
                log::warn!(
                    "{} oom_stall records dropped: the pipeline is not taking them",
                    made.len() - room
                );
            }
            out.extend(made.into_iter().take(room));
        }
    }

    /// True when an ancestor of `path` is stalled too: on v1 the kernel
    /// marks the whole subtree of the memcg at its limit `under_oom`, and
    /// the stall is that memcg's, reported once.
    fn under_stalled_ancestor(&self, path: &str) -> bool {
        let mut ancestor = path;
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if parent.is_empty() {
                return false;
            }
            if self.watches.get(parent).is_some_and(Watch::active) {
                return true;
            }
            ancestor = parent;
        }
        false
    }
}

/// What a record says of one stall at one moment.
struct Seen {
    phase: StallPhase,
    cause: StallCause,
    since_ns: u64,
    at_ns: u64,
    /// None for a memcg that was removed.
    usage: Option<u64>,
    limit: Option<u64>,
    ooms: Option<u64>,
}

/// The record, with the tasks in `dir` (None: the memcg is gone).
fn record(path: &str, dir: Option<&Path>, seen: Seen) -> OomStall {
    let (tasks, tasks_total) = dir.map(stuck_tasks).unwrap_or_default();
    OomStall {
        schema: SCHEMA_VERSION,
        origin: Origin::default(),
        time: rfc3339_from_boot_ns(seen.at_ns),
        boot_ns: seen.at_ns,
        phase: seen.phase,
        cause: seen.cause,
        path: path.to_string(),
        since_boot_ns: seen.since_ns,
        duration_ms: (seen.phase == StallPhase::End)
            .then(|| seen.at_ns.saturating_sub(seen.since_ns) / 1_000_000),
        usage_bytes: seen.usage,
        limit_bytes: seen.limit,
        ooms: seen.ooms,
        tasks,
        tasks_total,
        container: None,
        k8s: None,
        systemd_unit: None,
    }
}

/// How close to its limit a memcg must be for its OOM state to be read:
/// within 1/16 of the limit or 8 MiB, whichever is more. A memcg stalled
/// at its limit is within one charge batch (64 pages) of it, a huge page
/// at worst; the margin only costs reads of memcgs close to theirs.
pub fn near_limit(usage: u64, limit: Option<u64>) -> bool {
    limit.is_some_and(|limit| usage.saturating_add((limit / 16).max(8 << 20)) >= limit)
}

/// What a memcg's OOM file said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomState {
    /// v1 `memory.oom_control`.
    V1 {
        oom_kill_disable: bool,
        under_oom: bool,
    },
    /// v2 `memory.events`: the `oom` and `oom_kill` counters.
    V2 { oom: u64, oom_kill: u64 },
}

/// Reads the memcg's OOM file: `memory.oom_control` (v1) or
/// `memory.events` (v2). None when it cannot be read (the memcg is gone,
/// or a kernel without the file).
pub fn read_oom_state(dir: &Path, version: Version) -> Option<OomState> {
    let name = match version {
        Version::V1 => "memory.oom_control",
        Version::V2 => "memory.events",
    };
    let mut text = String::new();
    File::open(dir.join(name))
        .and_then(|mut file| file.read_to_string(&mut text))
        .ok()?;
    parse_oom_state(&text, version)
}

pub fn parse_oom_state(text: &str, version: Version) -> Option<OomState> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    match version {
        Version::V1 => Some(OomState::V1 {
            oom_kill_disable: field("oom_kill_disable")? != 0,
            under_oom: field("under_oom")? != 0,
        }),
        Version::V2 => Some(OomState::V2 {
            oom: field("oom")?,
            // Counted since 4.13 with `oom`; absent means none.
            oom_kill: field("oom_kill").unwrap_or(0),
        }),
    }
}

/// One memcg's stall detector, fed one OOM state per sample.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// v2: the counters of the previous sample, when it read them.
    last_counters: Option<(u64, u64)>,
    /// The first sample of the current run of stalled samples, and how
    /// many samples that run has.
    since_ns: Option<u64>,
    run: u32,
    /// v2: `oom` counted during the run.
    ooms: u64,
    cause: Option<StallCause>,
    /// A `start` was reported (by this memcg, not folded into an
    /// ancestor's): its end must be reported too.
    pub reported: bool,
}

/// What a sample changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Stalled for two samples in a row: write `start`.
    Started,
    /// No longer stalled after a `start`: write `end`.
    Ended,
}

impl Watch {
    /// Takes one sample's OOM state (None: not read, the memcg is away from
    /// its limit, or the file is gone).
    pub fn observe(&mut self, at_ns: u64, state: Option<OomState>) -> Option<Transition> {
        let stalled = match state {
            Some(OomState::V1 {
                oom_kill_disable,
                under_oom,
            }) => {
                self.cause = Some(if oom_kill_disable {
                    StallCause::OomKillDisabled
                } else {
                    StallCause::UnderOom
                });
                under_oom
            }
            Some(OomState::V2 { oom, oom_kill }) => {
                let last = self.last_counters.replace((oom, oom_kill));
                self.cause = Some(StallCause::NoKillableTask);
                // A stall: OOMs counted since the last sample, kills not.
                match last {
                    Some((last_oom, last_kill)) if oom > last_oom && oom_kill == last_kill => {
                        self.ooms += oom - last_oom;
                        true
                    }
                    _ => false,
                }
            }
            None => {
                self.last_counters = None;
                false
            }
        };
        if stalled {
            self.since_ns.get_or_insert(at_ns);
            self.run += 1;
            return (self.run == 2).then_some(Transition::Started);
        }
        let was_started = self.run >= 2;
        self.since_ns = None;
        self.run = 0;
        self.ooms = 0;
        was_started.then_some(Transition::Ended)
    }

    /// Stalled in the latest sample (suspected or started).
    pub fn active(&self) -> bool {
        self.run > 0
    }

    /// Worth keeping between samples: mid-run, or holding v2 counters.
    pub fn is_idle(&self) -> bool {
        self.run == 0 && self.last_counters.is_none() && !self.reported
    }

    pub fn since_ns(&self) -> Option<u64> {
        self.since_ns
    }

    pub fn cause(&self) -> StallCause {
        self.cause.unwrap_or(StallCause::Unknown)
    }

    /// v2: the OOMs counted in the run so far; None on v1.
    pub fn ooms(&self, version: Version) -> Option<u64> {
        (version == Version::V2).then_some(self.ooms)
    }
}

/// At most this many tasks are listed in a record.
pub const MAX_TASKS: usize = 32;
/// The walk for tasks stops after this many memcgs below the stalled one.
const MAX_DIRS: usize = 256;

/// The processes in `dir` and its descendants: the first [`MAX_TASKS`]
/// with their comm, state and oom_score_adj from /proc, and how many there
/// are in all.
pub fn stuck_tasks(dir: &Path) -> (Vec<StuckTask>, u64) {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut seen_dirs = 0;
    while let Some(dir) = dirs.pop() {
        seen_dirs += 1;
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                text.lines()
                    .filter_map(|line| line.trim().parse::<u32>().ok()),
            );
        }
        if seen_dirs >= MAX_DIRS {
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let total = pids.len() as u64;
    let tasks = pids.into_iter().take(MAX_TASKS).map(stuck_task).collect();
    (tasks, total)
}

fn stuck_task(pid: u32) -> StuckTask {
    let proc = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok();
    StuckTask {
        pid,
        comm: proc("comm").map(|comm| comm.trim_end_matches('\n').to_string()),
        state: proc("stat").and_then(|stat| stat_state(&stat)),
        oom_score_adj: proc("oom_score_adj").and_then(|adj| adj.trim().parse().ok()),
    }
}

/// The state letter of /proc/PID/stat: the field after the comm, whose
/// closing parenthesis is the last one in the line (a comm may hold any).
fn stat_state(stat: &str) -> Option<String> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CONTROL: &str = "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n";
    const V2_EVENTS: &str = "low 0\nhigh 0\nmax 120\noom 7\noom_kill 0\noom_group_kill 0\n";

    fn v2(oom: u64, oom_kill: u64) -> Option<OomState> {
        Some(OomState::V2 { oom, oom_kill })
    }

    #[test]
    fn parses_both_files() {
        assert_eq!(
            parse_oom_state(V1_CONTROL, Version::V1),
            Some(OomState::V1 {
                oom_kill_disable: true,
                under_oom: true
            })
        );
        assert_eq!(parse_oom_state(V2_EVENTS, Version::V2), v2(7, 0));
        assert_eq!(parse_oom_state("oom_kill 3\n", Version::V2), None);
        assert_eq!(parse_oom_state("", Version::V1), None);
    }

    #[test]
    fn near_the_limit() {
        assert!(!near_limit(100 << 20, None));
        assert!(near_limit(60 << 20, Some(64 << 20)), "within 8 MiB");
        assert!(!near_limit(50 << 20, Some(64 << 20)));
        assert!(near_limit(960 << 20, Some(1 << 30)), "within 1/16");
        assert!(!near_limit(900 << 20, Some(1 << 30)));
    }

    #[test]
    fn v1_starts_at_the_second_sample_and_ends_once() {
        let mut w = Watch::default();
        let under = |under_oom| {
            Some(OomState::V1 {
                oom_kill_disable: true,
                under_oom,
            })
        };
        assert_eq!(w.observe(1, under(false)), None);
        assert_eq!(w.observe(2, under(true)), None, "one sample is no stall");
        assert_eq!(w.observe(3, under(true)), Some(Transition::Started));
        assert_eq!(w.since_ns(), Some(2));
        assert_eq!(w.cause(), StallCause::OomKillDisabled);
        assert_eq!(w.observe(4, under(true)), None);
        assert_eq!(w.observe(5, under(false)), Some(Transition::Ended));
        assert_eq!(w.observe(6, under(false)), None);
    }

    #[test]
    fn a_single_stalled_sample_is_no_stall() {
        let mut w = Watch::default();
        let under = Some(OomState::V1 {
            oom_kill_disable: false,
            under_oom: true,
        });
        assert_eq!(w.observe(1, under), None);
        assert_eq!(w.observe(2, None), None, "left the limit: no end either");
    }

    #[test]
    fn v2_needs_ooms_without_kills() {
        let mut w = Watch::default();
        assert_eq!(w.observe(1, v2(3, 1)), None, "a baseline");
        assert_eq!(w.observe(2, v2(9, 1)), None);
        assert_eq!(w.observe(3, v2(20, 1)), Some(Transition::Started));
        assert_eq!(w.ooms(Version::V2), Some(17));
        assert_eq!(w.cause(), StallCause::NoKillableTask);
        assert_eq!(
            w.observe(4, v2(25, 2)),
            Some(Transition::Ended),
            "a kill: the OOM killer works again"
        );
    }

    #[test]
    fn v2_ooms_that_kill_are_no_stall() {
        let mut w = Watch::default();
        for (at, (oom, kill)) in [(1, 1), (2, 2), (3, 3), (4, 4)].into_iter().enumerate() {
            assert_eq!(w.observe(at as u64, v2(oom, kill)), None);
        }
        assert!(!w.active());
    }

    #[test]
    fn an_unread_sample_breaks_the_v2_baseline() {
        let mut w = Watch::default();
        assert_eq!(w.observe(1, v2(1, 0)), None);
        assert_eq!(w.observe(2, None), None);
        assert_eq!(w.observe(3, v2(5, 0)), None, "no baseline from sample 1");
        assert!(!w.active());
    }

    #[test]
    fn state_letter_after_a_hostile_comm() {
        assert_eq!(stat_state("42 (a) b) R 1 2 3").as_deref(), Some("R"));
        assert_eq!(stat_state("42 (x) D 1").as_deref(), Some("D"));
        assert_eq!(stat_state("garbage"), None);
    }
}
