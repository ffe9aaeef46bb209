//! Kernel records → output records: units, `null` for what was not read,
//! the cgroup paths rebuilt from the names the kernel walked, the exit
//! status as a shell reports it, and the records around the kills.

use oomtrace_ebpf::{
    CGROUP_NAMES_SIZE, ExitRecord, KillRecord, MAX_CGROUP_DEPTH, SOURCE_RAW_TRACEPOINT,
    SOURCE_TRACEPOINT, cgroup_path_of,
};
use oomtrace_record::{
    CgroupRef, CollectorStatus, Constraint, Counters, Exit, HostFacts, KillSource, Lost, Memcg,
    MemcgLevel, Oom, OomKill, Origin, ProbeStatus, Rss, SCHEMA_VERSION, Start, Stop, StopReason,
    Trigger, Victim, comm_fields,
};

use super::join::Tracking;
use crate::kernel::{clock, maps::KernelLoss};

/// `PAGE_COUNTER_MAX` (LONG_MAX / PAGE_SIZE): a page_counter at or above
/// this has no limit.
fn page_counter_max(page_size: u64) -> u64 {
    (i64::MAX as u64) / page_size
}

/// The hierarchy the kernel walked, as (kernfs id, path) pairs, leaf first,
/// root last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CgroupChain {
    pub levels: Vec<(u64, String)>,
}

impl CgroupChain {
    /// Rebuilds the chain from `cgroup_names`/`cgroup_ids`. None unless the
    /// walk reached the root: a partial path is never passed off as a path.
    pub fn from_record(rec: &KillRecord) -> Option<Self> {
        if rec.cgroup_path_of == cgroup_path_of::NONE {
            return None;
        }
        let depth = (rec.cgroup_depth as usize).min(MAX_CGROUP_DEPTH - 1);
        let used = (rec.cgroup_names_len as usize).min(CGROUP_NAMES_SIZE);
        let names: Vec<&[u8]> = rec.cgroup_names[..used]
            .split(|b| *b == 0)
            .take(depth)
            .collect();
        if names.len() != depth {
            return None;
        }
        // names[0] is the leaf; the path of level i is the reversed names[i..].
        let mut levels = Vec::with_capacity(depth + 1);
        for i in 0..depth {
            let mut path = String::new();
            for name in names[i..].iter().rev() {
                path.push('/');
                path.push_str(&String::from_utf8_lossy(name));
            }
            levels.push((rec.cgroup_ids[i], path));
        }
        levels.push((rec.cgroup_ids[depth], "/".to_string()));
        Some(Self { levels })
    }

    pub fn leaf(&self) -> Option<&(u64, String)> {
        self.levels.first()
    }

    pub fn path_of(&self, id: u64) -> Option<&str> {
        self.levels
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_str())
    }
}

/// `comm` and `comm_hex`, from a kernel comm that may be unknown.
fn comm(raw: Option<[u8; oomtrace_ebpf::COMM_LEN]>) -> (Option<String>, Option<String>) {
    match raw {
        Some(raw) => {
            let (comm, hex) = comm_fields(&raw);
            (Some(comm), hex)
        }
        None => (None, None),
    }
}

/// The `oom_kill` record for a kill whose exit is not known yet, and how
/// the kernel tracks its victim.
pub fn kill(rec: &KillRecord, origin: &Origin, page_size: u64) -> (OomKill, Tracking) {
    let chain = CgroupChain::from_record(rec);
    // The victim's own cgroup, as opposed to the fired memcg's ancestry.
    let victim_chain = chain
        .as_ref()
        .filter(|_| rec.cgroup_path_of == cgroup_path_of::VICTIM);
    let (victim_comm, victim_comm_hex) = comm(rec.victim_comm.get());
    let (trigger_comm, trigger_comm_hex) = comm(rec.trigger_comm.get());
    let ns_pid = rec.victim_ns_pid.get();
    let victim = Victim {
        pid: rec.victim_tgid.get(),
        tid: rec.victim_tid.get(),
        ns_pid,
        container_init: ns_pid.map(|pid| pid == 1),
        // TEMPORARY until the kernel side reads the namespace's inode.
        pid_ns: None,
        comm: victim_comm,
        comm_hex: victim_comm_hex,
        uid: rec.victim_uid.get(),
        // The kernel's oom_score_adj is a short; the program widened it.
        oom_score_adj: rec.victim_oom_score_adj.get().map(|adj| adj as i16),
        total_vm_bytes: rec.total_vm_bytes.get(),
        pgtables_bytes: rec.pgtables_bytes.get(),
        rss: Rss {
            anon_bytes: rec.rss_anon_bytes.get(),
            file_bytes: rec.rss_file_bytes.get(),
            shmem_bytes: rec.rss_shmem_bytes.get(),
        },
        cgroup: CgroupRef {
            id: victim_chain.and_then(|c| c.leaf()).map(|(id, _)| *id),
            path: victim_chain.and_then(|c| c.leaf()).map(|(_, p)| p.clone()),
        },
    };
    let trigger = Trigger {
        pid: Some(rec.trigger_tgid),
        tid: Some(rec.trigger_tid),
        comm: trigger_comm,
        comm_hex: trigger_comm_hex,
    };
    let oom = match rec.oom.get() {
        Some(context) => Oom {
            constraint: constraint(context.constraint),
            memcg_path: (context.memcg_id != 0)
                .then(|| {
                    chain
                        .as_ref()?
                        .path_of(context.memcg_id)
                        .map(str::to_string)
                })
                .flatten(),
            points: Some(context.chosen_points),
            totalpages: Some(context.totalpages),
            chosen_pid: Some(context.chosen_tgid),
            ..Oom::default()
        },
        None => Oom::default(),
    };
    let tracking = match (rec.victim_key.get(), rec.same_victim_as.get()) {
        (Some(key), _) => Tracking::Key(key),
        (None, Some(seq)) => Tracking::SameAs(seq),
        (None, None) => Tracking::Untracked,
    };
    let kill = OomKill {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        seq: rec.seq,
        time: clock::rfc3339_from_boot_ns(rec.boot_ns),
        boot_ns: rec.boot_ns,
        source: match rec.source {
            SOURCE_RAW_TRACEPOINT => KillSource::RawTracepoint,
            SOURCE_TRACEPOINT => KillSource::Tracepoint,
            _ => KillSource::Unknown,
        },
        victim,
        trigger,
        oom,
        memcg: memcg(rec, victim_chain, page_size),
        exit: Exit::default(),
        // Filled by attribution::Attributor.
        container: None,
        k8s: None,
        systemd_unit: None,
        container_survives: None,
    };
    (kill, tracking)
}

/// `enum oom_constraint` in include/linux/oom.h. A value this oomtrace does
/// not know is null, not a guess.
fn constraint(value: u32) -> Option<Constraint> {
    match value {
        0 => Some(Constraint::Global),
        1 => Some(Constraint::Cpuset),
        2 => Some(Constraint::Mempolicy),
        3 => Some(Constraint::Memcg),
        other => {
            log::warn!("unknown oom_constraint {other} from the kernel: oom.constraint is null");
            None
        }
    }
}

fn memcg(rec: &KillRecord, chain: Option<&CgroupChain>, page_size: u64) -> Option<Memcg> {
    let depth = (rec.memcg_depth as usize).min(MAX_CGROUP_DEPTH);
    if rec.memcg_complete == 0 || depth == 0 {
        return None;
    }
    let unlimited = page_counter_max(page_size);
    let oom_groups = rec.memcg_oom_group.get();
    let levels: Vec<MemcgLevel> = (0..depth)
        .map(|i| MemcgLevel {
            path: chain
                .and_then(|c| c.path_of(rec.memcg_ids[i]))
                .map(str::to_string),
            usage_bytes: rec.memcg_usage_pages[i] * page_size,
            limit_bytes: (rec.memcg_max_pages[i] < unlimited)
                .then(|| rec.memcg_max_pages[i] * page_size),
            oom_group: oom_groups.map(|groups| groups[i] != 0),
        })
        .collect();
    let leaf = levels.first()?.clone();
    Some(Memcg {
        path: leaf.path,
        usage_bytes: leaf.usage_bytes,
        limit_bytes: leaf.limit_bytes,
        levels,
    })
}

/// TEMPORARY until the trigger's memcg ancestry is recorded: unknown.
pub fn shared_memcg_levels(_rec: &KillRecord) -> Option<usize> {
    None
}

/// The wait status do_exit() stored, as a shell would report it.
pub fn exit(kill_boot_ns: u64, exit: &ExitRecord) -> Exit {
    let delay_ms = exit.boot_ns.saturating_sub(kill_boot_ns) as f64 / 1e6;
    let delay_ms = Some((delay_ms * 1000.0).round() / 1000.0);
    let Some(status) = exit.exit_code.get() else {
        return Exit {
            observed: true,
            code: None,
            signal: None,
            delay_ms,
        };
    };
    let signal = status & 0x7f;
    let (code, signal) = if signal != 0 {
        (128 + signal, Some(signal))
    } else {
        ((status >> 8) & 0xff, None)
    };
    Exit {
        observed: true,
        code: Some(code),
        signal,
        delay_ms,
    }
}

/// The `start` record.
pub fn start(
    origin: &Origin,
    host: HostFacts,
    probes: Vec<ProbeStatus>,
    collector: CollectorStatus,
    notes: Vec<String>,
) -> Start {
    let boot_ns = clock::boot_ns();
    Start {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        time: clock::rfc3339_from_boot_ns(boot_ns),
        boot_ns,
        version: env!("CARGO_PKG_VERSION").into(),
        host,
        probes,
        collector,
        notes,
    }
}

/// What could not be recorded since the `reported` totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    pub kernel: KernelLoss,
    pub events_dropped: u64,
    pub records_dropped: u64,
}

/// The `lost` record for the difference between two loss totals; None when
/// nothing moved. Totals only grow, but a counter that went backwards (a
/// map read that failed, say) reports nothing rather than a wrapped number.
pub fn lost(origin: &Origin, now: Loss, reported: Loss) -> Option<Lost> {
    let delta = |now: u64, before: u64| now.saturating_sub(before);
    let lost = Lost {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        time: String::new(),
        boot_ns: 0,
        kills: delta(now.kernel.kills, reported.kernel.kills),
        exits: delta(now.kernel.exits, reported.kernel.exits),
        untracked_victims: delta(
            now.kernel.untracked_victims,
            reported.kernel.untracked_victims,
        ),
        events_dropped: delta(now.events_dropped, reported.events_dropped),
        records_dropped: delta(now.records_dropped, reported.records_dropped),
    };
    if lost.kills + lost.exits + lost.untracked_victims + lost.events_dropped + lost.records_dropped
        == 0
    {
        return None;
    }
    let boot_ns = clock::boot_ns();
    Some(Lost {
        time: clock::rfc3339_from_boot_ns(boot_ns),
        boot_ns,
        ..lost
    })
}

/// The `stop` record.
pub fn stop(origin: &Origin, reason: StopReason, counters: Counters) -> Stop {
    let boot_ns = clock::boot_ns();
    Stop {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        time: clock::rfc3339_from_boot_ns(boot_ns),
        boot_ns,
        reason,
        counters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_ebpf::{Known, OomContext};

    /// A zeroed record, as the programs start every record.
    fn blank() -> KillRecord {
        // SAFETY: KillRecord is plain integers and arrays of integers.
        unsafe { std::mem::zeroed() }
    }

    fn with_path(names: &[&str], ids: &[u64]) -> KillRecord {
        let mut rec = blank();
        let mut used = 0;
        for name in names {
            rec.cgroup_names[used..used + name.len()].copy_from_slice(name.as_bytes());
            used += name.len() + 1;
        }
        rec.cgroup_names_len = used as u32;
        rec.cgroup_depth = names.len() as u32;
        rec.cgroup_ids[..ids.len()].copy_from_slice(ids);
        rec.cgroup_path_of = cgroup_path_of::VICTIM;
        rec
    }

    fn convert(rec: &KillRecord) -> OomKill {
        kill(rec, &Origin::default(), 4096).0
    }

    #[test]
    fn path_is_rebuilt_root_first() {
        let rec = with_path(&["ctr", "pod1", "kubepods"], &[30, 20, 10, 1]);
        let chain = CgroupChain::from_record(&rec).expect("chain");
        assert_eq!(
            chain.levels,
            vec![
                (30, "/kubepods/pod1/ctr".to_string()),
                (20, "/kubepods/pod1".to_string()),
                (10, "/kubepods".to_string()),
                (1, "/".to_string()),
            ]
        );
        assert_eq!(chain.path_of(20), Some("/kubepods/pod1"));
        assert_eq!(chain.path_of(99), None);
    }

    #[test]
    fn root_cgroup_and_incomplete_walks() {
        let rec = with_path(&[], &[1]);
        let chain = CgroupChain::from_record(&rec).expect("chain");
        assert_eq!(chain.leaf(), Some(&(1, "/".to_string())));
        let mut partial = with_path(&["a"], &[5]);
        partial.cgroup_path_of = cgroup_path_of::NONE;
        assert_eq!(CgroupChain::from_record(&partial), None);
        let mut lying = with_path(&["a"], &[5]);
        lying.cgroup_depth = 3; // more levels than names: refuse
        assert_eq!(CgroupChain::from_record(&lying), None);
    }

    #[test]
    fn unread_fields_are_null_and_the_victim_untracked() {
        let (kill, tracking) = kill(&blank(), &Origin::default(), 4096);
        assert_eq!(tracking, Tracking::Untracked);
        let json = serde_json::to_value(&kill).expect("json");
        assert!(json["victim"]["pid"].is_null());
        assert!(json["victim"]["rss"]["anon_bytes"].is_null());
        assert!(json["victim"]["cgroup"]["path"].is_null());
        assert!(json["oom"]["constraint"].is_null());
        assert!(json["memcg"].is_null());
        assert_eq!(json["exit"]["observed"], false);
    }

    #[test]
    fn tracking_comes_from_the_kernels_registry() {
        let mut rec = blank();
        rec.victim_key = Known::new(42);
        assert_eq!(kill(&rec, &Origin::default(), 4096).1, Tracking::Key(42));
        let mut rec = blank();
        rec.same_victim_as = Known::new(7);
        assert_eq!(kill(&rec, &Origin::default(), 4096).1, Tracking::SameAs(7));
    }

    #[test]
    fn memcg_levels_get_paths_and_unlimited_is_null() {
        let mut rec = with_path(&["child", "parent"], &[3, 2, 1]);
        rec.memcg_complete = 1;
        rec.memcg_depth = 3;
        rec.memcg_ids[..3].copy_from_slice(&[3, 2, 1]);
        rec.memcg_usage_pages[..3].copy_from_slice(&[10, 25, 1000]);
        rec.memcg_max_pages[..3].copy_from_slice(&[u64::MAX >> 1, 25, page_counter_max(4096)]);
        rec.oom = Known::new(OomContext {
            constraint: 3,
            memcg_id: 2,
            ..OomContext::default()
        });
        let kill = convert(&rec);
        let memcg = kill.memcg.expect("memcg");
        assert_eq!(memcg.path.as_deref(), Some("/parent/child"));
        assert_eq!(memcg.limit_bytes, None);
        assert_eq!(memcg.levels[1].limit_bytes, Some(25 * 4096));
        assert_eq!(memcg.levels[2].path.as_deref(), Some("/"));
        assert_eq!(memcg.levels[2].limit_bytes, None);
        assert_eq!(memcg.levels[0].oom_group, None, "unknown on this kernel");
        assert_eq!(kill.oom.constraint, Some(Constraint::Memcg));
        assert_eq!(kill.oom.memcg_path.as_deref(), Some("/parent"));
    }

    /// From the classic tracepoint the buffer holds the fired memcg's path:
    /// it names `oom.memcg_path` and never poses as the victim's cgroup.
    #[test]
    fn fired_memcg_path_is_not_the_victims_cgroup() {
        let mut rec = with_path(&["pod", "kubepods"], &[7, 6, 1]);
        rec.cgroup_path_of = cgroup_path_of::OOM_MEMCG;
        rec.oom = Known::new(OomContext {
            constraint: 3,
            memcg_id: 7,
            ..OomContext::default()
        });
        let kill = convert(&rec);
        assert_eq!(kill.oom.memcg_path.as_deref(), Some("/kubepods/pod"));
        assert_eq!(kill.victim.cgroup.path, None);
        assert_eq!(kill.victim.cgroup.id, None);
        assert!(kill.memcg.is_none());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let record = |code: Option<i32>| ExitRecord {
            boot_ns: 3_500_000,
            exit_code: Known::from_option(code),
            ..Default::default()
        };
        let killed = exit(1_000_000, &record(Some(9)));
        assert_eq!((killed.code, killed.signal), (Some(137), Some(9)));
        assert_eq!(killed.delay_ms, Some(2.5));
        let normal = exit(0, &record(Some(3 << 8)));
        assert_eq!((normal.code, normal.signal), (Some(3), None));
        let unknown = exit(0, &record(None));
        assert!(unknown.observed && unknown.code.is_none());
    }

    #[test]
    fn loss_is_reported_as_a_difference_that_never_wraps() {
        let origin = Origin::default();
        let at = |kills, dropped| Loss {
            kernel: KernelLoss {
                kills,
                ..KernelLoss::default()
            },
            events_dropped: dropped,
            records_dropped: 0,
        };
        assert!(lost(&origin, at(3, 0), at(3, 0)).is_none());
        let l = lost(&origin, at(5, 2), at(3, 0)).expect("moved");
        assert_eq!((l.kills, l.events_dropped), (2, 2));
        assert!(lost(&origin, at(0, 0), at(3, 0)).is_none(), "no wrap");
    }
}
