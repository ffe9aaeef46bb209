//! `oomtrace rank`: who the OOM killer would kill next, in each memory
//! cgroup with a limit and on the node, computed from /proc and the memcg
//! files with the kernel's own badness rule ([`badness`]).
//!
//! One pass ([`Ranker::pass`]) reads every process ([`procfs`]), the memcgs
//! that hold them and their ancestors ([`memcg`]), and names containers and
//! pods with the collector's attribution. It is a sample, not an atomic
//! view: each process is read at its own instant.

pub mod badness;
mod memcg;
mod procfs;
mod text;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use oomtrace_record::{
    Origin, RankCandidate, RankMemcg, RankProcess, RankSkip, Record, SCHEMA_VERSION,
};

use self::badness::{TaskPages, choose};
pub use self::text::render;
use crate::{
    kernel::{clock, host},
    pipeline::{
        attribution::{Attributor, HostView, Names, RuntimeRoots},
        sampler::{Buffer, Version},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("no memory cgroup controller is mounted (see /proc/self/mounts)")]
    NoMemoryController,
    #[error(
        "the memory cgroup hierarchy at {0} does not show its root here (a cgroup namespace or a \
         bind-mounted sub-tree): run rank where the host's cgroup tree is mounted"
    )]
    NotAtRoot(String),
    #[error("reading {path}")]
    Proc {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no memory cgroup {0:?}: give its path from the hierarchy's root (`/docker/ID`, as \
         /proc/PID/cgroup shows it) or its directory under {1}"
    )]
    NoSuchCgroup(String, String),
}

/// How rows are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Processes by badness (the kill order), memcgs by headroom.
    #[default]
    Score,
    /// Memcgs by headroom (least first), processes by their memcg's.
    Headroom,
    /// Processes by resident memory, memcgs by usage.
    Rss,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this memcg and its descendants (a path from the hierarchy's
    /// root, or a directory under the mount).
    pub cgroup: Option<String>,
    pub sort: SortBy,
    /// At most this many processes, and memcgs.
    pub top: Option<usize>,
}

/// One pass's result.
#[derive(Debug)]
pub struct Pass {
    pub processes: Vec<RankProcess>,
    pub memcgs: Vec<RankMemcg>,
    /// The memcg asked for with --cgroup, its path normalized.
    pub cgroup: Option<String>,
    /// Processes seen, before --cgroup and --top.
    pub seen: usize,
    pub node: NodeFacts,
    /// What could not be read, one line each.
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NodeFacts {
    pub ram_bytes: u64,
    pub swap_bytes: u64,
    /// totalram_pages + total_swap_pages: the totalpages of a global OOM.
    pub total_pages: u64,
    pub page_size: u64,
}

/// What stays across passes (`--watch`): the host, the attribution caches.
pub struct Ranker {
    proc: PathBuf,
    mount: PathBuf,
    version: Version,
    page_size: u64,
    origin: Origin,
    attributor: Attributor,
    names: HashMap<String, Names>,
    buffer: Buffer,
}

impl Ranker {
    pub fn new() -> Result<Self, RankError> {
        let facts = host::gather();
        let controller = facts
            .memory_controller
            .as_ref()
            .ok_or(RankError::NoMemoryController)?;
        let version = if controller.version == 1 {
            Version::V1
        } else {
            Version::V2
        };
        let mount = host::cgroup_root_dir(&facts)
            .ok_or_else(|| RankError::NotAtRoot(controller.mount.clone()))?;
        let page_size = facts.page_size.max(1);
        let mut origin = host::origin(&facts);
        // A rank pass is not a collector run: no run id to restart seq with.
        origin.run_id = None;
        let attributor = Attributor::new(
            Path::new("/"),
            page_size,
            HostView {
                pid_ns: facts.pid_ns,
                cgroup_root: Some(mount.clone()),
                runtime_roots: RuntimeRoots::default(),
            },
        );
        Ok(Self {
            proc: PathBuf::from("/proc"),
            mount,
            version,
            page_size,
            origin,
            attributor,
            names: HashMap::new(),
            buffer: Buffer::default(),
        })
    }

    /// The path from the hierarchy's root of what --cgroup gave.
    fn normalize(&self, given: &str) -> Result<String, RankError> {
        let mount = self.mount.to_string_lossy();
        let path = given
            .strip_prefix(mount.as_ref())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or(given);
        let path = format!("/{}", path.trim_matches('/'));
        if !path.starts_with('/') || !self.mount.join(path.trim_start_matches('/')).is_dir() {
            return Err(RankError::NoSuchCgroup(
                given.to_string(),
                mount.into_owned(),
            ));
        }
        Ok(path)
    }

    fn names(&mut self, path: &str) -> Names {
        if let Some(names) = self.names.get(path) {
            return names.clone();
        }
        let names = self.attributor.names(path);
        self.names.insert(path.to_string(), names.clone());
        names
    }

    /// Reads everything once and ranks it.
    pub fn pass(&mut self, options: &Options) -> Result<Pass, RankError> {
        let boot_ns = clock::boot_ns();
        let time = clock::rfc3339_from_boot_ns(boot_ns);
        let cgroup = options
            .cgroup
            .as_deref()
            .map(|c| self.normalize(c))
            .transpose()?;
        let node = self.node_facts();
        let read = procfs::read_all(&self.proc).map_err(|source| RankError::Proc {
            path: self.proc.clone(),
            source,
        })?;
        let seen = read.len();
        let mut problems = Vec::new();
        let unreadable = read.iter().filter(|p| !p.unreadable.is_empty()).count();
        if unreadable > 0 {
            let mut kinds: BTreeSet<&str> = BTreeSet::new();
            for p in &read {
                kinds.extend(p.unreadable.iter().map(String::as_str));
            }
            problems.push(format!(
                "{unreadable} of {seen} processes not read whole ({}): run as root for all",
                kinds.into_iter().collect::<Vec<_>>().join("; ")
            ));
        }

        let mut processes: Vec<RankProcess> = read
            .into_iter()
            .map(|p| self.process_record(p, &node, &time, boot_ns))
            .collect();
        node_ranks(&mut processes);

        // Every memcg that holds a process, and its ancestors.
        let mut paths: BTreeSet<String> = BTreeSet::new();
        for p in &processes {
            if let Some(path) = &p.memcg_path {
                let mut at = path.as_str();
                while at.len() > 1 {
                    paths.insert(at.to_string());
                    at = at.rsplit_once('/').map_or("/", |(up, _)| up);
                    if at.is_empty() {
                        break;
                    }
                }
            }
        }
        if let Some(c) = &cgroup {
            paths.retain(|p| within(p, c));
            if c != "/" {
                paths.insert(c.clone());
            }
        }
        let mut memcgs = Vec::new();
        for path in paths {
            let dir = self.mount.join(path.trim_start_matches('/'));
            let Some(limited) = memcg::read(&dir, self.version, &mut self.buffer) else {
                if cgroup.as_deref() == Some(path.as_str()) {
                    problems.push(format!(
                        "{path} has no limit of its own: a memcg OOM cannot start there \
                         (an ancestor's limit or the node's memory applies)"
                    ));
                }
                continue;
            };
            if let Some(error) = &limited.error {
                problems.push(format!("{path}: {error}"));
            }
            let record = self.memcg_record(&path, &limited, &processes, &node, &time, boot_ns);
            memcgs.push(record);
        }

        if let Some(c) = &cgroup {
            processes.retain(|p| p.memcg_path.as_deref().is_some_and(|m| within(m, c)));
        }
        sort(&mut processes, &mut memcgs, options.sort);
        if let Some(top) = options.top {
            processes.truncate(top);
            memcgs.truncate(top);
            for m in &mut memcgs {
                m.order.truncate(top);
            }
        }
        Ok(Pass {
            processes,
            memcgs,
            cgroup,
            seen,
            node,
            problems,
        })
    }

    fn node_facts(&self) -> NodeFacts {
        let meminfo = std::fs::read_to_string(self.proc.join("meminfo")).unwrap_or_default();
        let kb = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let (ram_bytes, swap_bytes) = (kb("MemTotal:"), kb("SwapTotal:"));
        NodeFacts {
            ram_bytes,
            swap_bytes,
            total_pages: (ram_bytes + swap_bytes) / self.page_size,
            page_size: self.page_size,
        }
    }

    fn process_record(
        &mut self,
        p: procfs::Process,
        node: &NodeFacts,
        time: &str,
        boot_ns: u64,
    ) -> RankProcess {
        let skipped = skip_reason(&p);
        let node_badness = match (skipped, p.memory, p.adj) {
            (None, Some(memory), Some(adj)) => {
                badness::badness(task_pages(&memory, node.page_size), adj, node.total_pages)
            }
            _ => None,
        };
        let names = p
            .memcg_path
            .as_deref()
            .map(|path| self.names(path))
            .unwrap_or_default();
        RankProcess {
            schema: SCHEMA_VERSION,
            origin: self.origin.clone(),
            time: time.to_string(),
            boot_ns,
            pid: p.pid,
            comm: p.comm,
            oom_score: p.oom_score,
            oom_score_adj: p.adj,
            rss_anon_bytes: p.memory.map(|m| m.anon),
            rss_file_bytes: p.memory.map(|m| m.file),
            rss_shmem_bytes: p.memory.map(|m| m.shmem),
            swap_bytes: p.memory.map(|m| m.swap),
            page_tables_bytes: p.memory.map(|m| m.page_tables),
            node_badness,
            node_rank: None,
            skipped,
            memcg_path: p.memcg_path,
            container: names.container,
            k8s: names.k8s,
            systemd_unit: names.systemd_unit,
            unreadable: p.unreadable,
        }
    }

    fn memcg_record(
        &mut self,
        path: &str,
        limited: &memcg::Limited,
        processes: &[RankProcess],
        node: &NodeFacts,
        time: &str,
        boot_ns: u64,
    ) -> RankMemcg {
        let page = node.page_size;
        let node_swappiness = || {
            std::fs::read_to_string(self.proc.join("sys/vm/swappiness"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(60)
        };
        let total_pages = badness::memcg_total_pages(
            limited.limit / page,
            limited.swap_limit.map(|s| s / page),
            node.swap_bytes / page,
            limited.swappiness.unwrap_or_else(node_swappiness),
        );
        let members: Vec<&RankProcess> = processes
            .iter()
            .filter(|p| p.memcg_path.as_deref().is_some_and(|m| within(m, path)))
            .collect();
        let candidate = |p: &RankProcess| -> Option<RankCandidate> {
            if p.skipped.is_some() {
                return None;
            }
            let pages = TaskPages {
                rss: (p.rss_anon_bytes? + p.rss_file_bytes? + p.rss_shmem_bytes?) / page,
                swap: p.swap_bytes? / page,
                page_tables: p.page_tables_bytes? / page,
            };
            let adj = p.oom_score_adj?;
            Some(RankCandidate {
                pid: p.pid,
                comm: p.comm.clone(),
                oom_score_adj: adj,
                badness: badness::badness(pages, adj, total_pages)?,
            })
        };
        let mut order: Vec<RankCandidate> = members.iter().filter_map(|p| candidate(p)).collect();
        // Highest first; equal badness in pid order (the kernel's order
        // among them is its own).
        order.sort_by(|a, b| b.badness.cmp(&a.badness).then(a.pid.cmp(&b.pid)));
        let choice = choose(order.iter().enumerate().map(|(i, c)| (i, c.badness)));
        let (next_victim, tied_with, runner_up, margin_pages) = match choice {
            Some(c) => (
                Some(order[c.victim].clone()),
                c.tied_with.iter().map(|&i| order[i].clone()).collect(),
                c.runner_up.map(|(i, _)| order[i].clone()),
                c.runner_up.map(|(_, b)| c.badness - b),
            ),
            None => (None, Vec::new(), None, None),
        };
        let headroom = limited.usage.map(|u| limited.limit.saturating_sub(u));
        let names = self.names(path);
        RankMemcg {
            schema: SCHEMA_VERSION,
            origin: self.origin.clone(),
            time: time.to_string(),
            boot_ns,
            path: path.to_string(),
            usage_bytes: limited.usage,
            limit_bytes: limited.limit,
            headroom_bytes: headroom,
            headroom_percent: headroom
                .map(|h| (h as f64 * 1000.0 / limited.limit.max(1) as f64).round() / 10.0),
            working_set_bytes: limited.working_set,
            total_pages,
            processes: u32::try_from(members.len()).unwrap_or(u32::MAX),
            next_victim,
            tied_with,
            runner_up,
            margin_pages,
            order,
            container: names.container,
            k8s: names.k8s,
        }
    }
}

/// Whether memcg `path` is `ancestor` or below it, by whole components.
pub fn within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn task_pages(m: &procfs::StatusMemory, page: u64) -> TaskPages {
    TaskPages {
        rss: (m.anon + m.file + m.shmem) / page,
        swap: m.swap / page,
        page_tables: m.page_tables / page,
    }
}

/// Why the OOM killer would pass over this process (the order the kernel
/// checks: unkillable task, no mm, then adj).
fn skip_reason(p: &procfs::Process) -> Option<RankSkip> {
    if p.pid == 1 {
        return Some(RankSkip::Init);
    }
    if p.no_mm && p.unreadable.is_empty() {
        return Some(RankSkip::NoMemory);
    }
    if p.memory.is_none() || p.adj.is_none() {
        return Some(RankSkip::Unreadable);
    }
    (p.adj == Some(badness::OOM_SCORE_ADJ_MIN)).then_some(RankSkip::AdjMin)
}

/// Fills `node_rank`: 1 for the highest badness, equal badness sharing a
/// place.
fn node_ranks(processes: &mut [RankProcess]) {
    let mut scores: Vec<i64> = processes.iter().filter_map(|p| p.node_badness).collect();
    scores.sort_unstable_by(|a, b| b.cmp(a));
    for p in processes.iter_mut() {
        p.node_rank = p.node_badness.map(|b| {
            let above = scores.partition_point(|&s| s > b);
            u32::try_from(above + 1).unwrap_or(u32::MAX)
        });
    }
}

fn rss(p: &RankProcess) -> u64 {
    p.rss_anon_bytes.unwrap_or(0) + p.rss_file_bytes.unwrap_or(0) + p.rss_shmem_bytes.unwrap_or(0)
}

fn sort(processes: &mut [RankProcess], memcgs: &mut [RankMemcg], by: SortBy) {
    let by_headroom = |a: &RankMemcg, b: &RankMemcg| {
        let key = |m: &RankMemcg| m.headroom_percent.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| a.path.cmp(&b.path))
    };
    let by_rank = |a: &RankProcess, b: &RankProcess| {
        let key = |p: &RankProcess| p.node_rank.unwrap_or(u32::MAX);
        key(a).cmp(&key(b)).then(a.pid.cmp(&b.pid))
    };
    match by {
        SortBy::Score => {
            processes.sort_by(by_rank);
            memcgs.sort_by(by_headroom);
        }
        SortBy::Rss => {
            processes.sort_by(|a, b| rss(b).cmp(&rss(a)).then(a.pid.cmp(&b.pid)));
            memcgs.sort_by(|a, b| b.usage_bytes.cmp(&a.usage_bytes).then(a.path.cmp(&b.path)));
        }
        SortBy::Headroom => {
            memcgs.sort_by(by_headroom);
            // A process by the least headroom of the limited memcgs it is
            // in: the one closest to a memcg OOM first.
            let headroom_of = |p: &RankProcess| {
                memcgs
                    .iter()
                    .filter(|m| {
                        p.memcg_path
                            .as_deref()
                            .is_some_and(|pm| within(pm, &m.path))
                    })
                    .filter_map(|m| m.headroom_percent)
                    .fold(f64::INFINITY, f64::min)
            };
            let mut keyed: Vec<(f64, RankProcess)> = processes
                .iter()
                .map(|p| (headroom_of(p), p.clone()))
                .collect();
            keyed.sort_by(|(ha, a), (hb, b)| ha.total_cmp(hb).then_with(|| by_rank(a, b)));
            for (slot, (_, p)) in processes.iter_mut().zip(keyed) {
                *slot = p;
            }
        }
    }
}

impl Pass {
    /// The records of `--json`: memcgs first, then processes.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.memcgs
            .iter()
            .map(|m| Record::RankMemcg(Box::new(m.clone())))
            .chain(
                self.processes
                    .iter()
                    .map(|p| Record::RankProcess(Box::new(p.clone()))),
            )
    }
}

#[cfg(test)]
mod tests;
