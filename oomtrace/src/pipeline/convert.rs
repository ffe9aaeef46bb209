//! Kernel records → output records: units, `null` for what was not read,
//! the cgroup paths rebuilt from the names the kernel walked, the exit
//! status as a shell reports it, and the records around the kills.

mod chain;
#[cfg(test)]
mod path_tests;
mod signal;

use oomtrace_ebpf::{
    CGROUP_LEVELS, CGROUP_PATH_MAX, ExitRecord, FAILCNT_UNTRACKED, KillRecord, MAX_CGROUP_DEPTH,
    MemcgEventCounts, SOURCE_RAW_TRACEPOINT, SOURCE_TRACEPOINT, cgroup_path_of, cgroup_walk_end,
    memcg_counter,
};
use oomtrace_record::{
    CgroupRef, CollectorStatus, Constraint, Counters, Exit, Heartbeat, HostFacts, KillSource, Lost,
    Memcg, MemcgEvents, MemcgLevel, Oom, OomKill, Origin, ProbeStatus, Rss, SCHEMA_VERSION, Start,
    Stop, StopReason, Trigger, Victim, comm_fields, text_fields,
};

pub use chain::CgroupChain;
pub use signal::{container_exit, signal_kill, status_cause};

use super::join::Tracking;
use crate::kernel::{clock, maps::KernelLoss, ring::KillEvent};

/// `PAGE_COUNTER_MAX` (LONG_MAX / PAGE_SIZE): a page_counter at or above
/// this has no limit.
fn page_counter_max(page_size: u64) -> u64 {
    (i64::MAX as u64) / page_size
}

/// A path and its `*_hex` sibling, from raw bytes that may be unknown.
fn path_fields(raw: Option<&[u8]>) -> (Option<String>, Option<String>) {
    match raw {
        Some(raw) => {
            let (path, hex) = text_fields(raw);
            (Some(path), hex)
        }
        None => (None, None),
    }
}

/// How many of the victim's memcg levels, counted from the root memcg
/// down, are ancestors of the trigger's memcg (or the trigger's memcg
/// itself): the memcgs whose limit an allocation by the trigger could have
/// hit, since the memcg whose limit fires is an ancestor-or-self of both
/// the trigger's memcg and the victim's. At least 1 (the root memcg) when
/// both are in one hierarchy. None when either walk did not reach the root
/// (classic tracepoint mode, a memcg more than `MAX_CGROUP_DEPTH` levels
/// deep, a kernel without the fields).
pub fn shared_memcg_levels(rec: &KillRecord) -> Option<usize> {
    let walked = |complete: u32, depth: u32| {
        let depth = depth as usize;
        (complete != 0 && (1..=CGROUP_LEVELS).contains(&depth)).then_some(depth)
    };
    let victim = walked(rec.memcg_complete, rec.memcg_depth)?;
    let trigger = walked(rec.trigger_memcg_complete, rec.trigger_memcg_depth)?;
    // Both lists are leaf first: compare them from their roots down.
    let shared = rec.memcg_ids[..victim]
        .iter()
        .rev()
        .zip(rec.trigger_memcg_ids[..trigger].iter().rev())
        .take_while(|(v, t)| v == t && **v != 0)
        .count();
    Some(shared)
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

/// The victim fields of a record read from a task: an OOM victim, a
/// signal's target, an exiting PID 1. `chain` is the victim's own cgroup
/// chain (None when the walk is of another cgroup, or did not reach the
/// root), `of_victim` whether the walk was of the victim's cgroup at all.
fn victim(kill: &KillEvent, chain: Option<&CgroupChain>, of_victim: bool) -> Victim {
    let rec = &kill.rec;
    let (victim_comm, victim_comm_hex) = comm(rec.victim_comm.get());
    let (cgroup_path, cgroup_path_hex) =
        path_fields(chain.and_then(|c| c.leaf()).map(|(_, p)| p.as_slice()));
    let ns_pid = rec.victim_ns_pid.get();
    Victim {
        pid: rec.victim_tgid.get(),
        tid: rec.victim_tid.get(),
        ns_pid,
        container_init: ns_pid.map(|pid| pid == 1),
        pid_ns: rec.victim_pid_ns.get().map(u64::from),
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
            id: if of_victim {
                chain::leaf_id(kill)
            } else {
                None
            },
            path: cgroup_path,
            path_hex: cgroup_path_hex,
        },
    }
}

/// How the kernel tracks a record's victim, from its registration.
fn tracking(rec: &KillRecord) -> Tracking {
    match (rec.victim_key.get(), rec.same_victim_as.get()) {
        (Some(key), _) => Tracking::Key(key),
        (None, Some(seq)) => Tracking::SameAs(seq),
        (None, None) => Tracking::Untracked,
    }
}

/// The `oom_kill` record for a kill whose exit is not known yet, and how
/// the kernel tracks its victim. `signal_hook`: whether the signal hook is
/// attached, so that `oom.killed` can be told.
pub fn kill(
    kill: &KillEvent,
    origin: &Origin,
    page_size: u64,
    signal_hook: bool,
) -> (OomKill, Tracking) {
    let rec = &kill.rec;
    let chain = CgroupChain::from_record(kill);
    let of_victim = rec.cgroup_path_of == cgroup_path_of::VICTIM;
    // The victim's own cgroup, as opposed to the fired memcg's ancestry.
    let victim_chain = chain.as_ref().filter(|_| of_victim);
    log_uncarried_path(rec);
    let (trigger_comm, trigger_comm_hex) = comm(rec.trigger_comm.get());
    let victim = victim(kill, victim_chain, of_victim);
    let trigger = Trigger {
        pid: Some(rec.trigger_tgid),
        tid: Some(rec.trigger_tid),
        comm: trigger_comm,
        comm_hex: trigger_comm_hex,
    };
    let oom = match rec.oom.get() {
        Some(context) => {
            let fired = (context.memcg_id != 0)
                .then(|| chain.as_ref()?.path_of(context.memcg_id))
                .flatten();
            let (memcg_path, memcg_path_hex) = path_fields(fired);
            Oom {
                constraint: constraint(context.constraint),
                memcg_path,
                memcg_path_hex,
                points: Some(context.chosen_points),
                totalpages: Some(context.totalpages),
                chosen_pid: Some(context.chosen_tgid),
                ..Oom::default()
            }
        }
        None => Oom::default(),
    };
    let mut oom = oom;
    oom.killed = signal_hook.then_some(rec.oom_sigkill != 0);
    let tracking = tracking(rec);
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
        // Filled by the pipeline from the sampler, when the kill is written.
        memory: None,
    };
    (kill, tracking)
}

/// Says on stderr why a cgroup path is null when a limit of the kernel's
/// walk is the reason (the record itself only has the null).
fn log_uncarried_path(rec: &KillRecord) {
    let whose = match rec.cgroup_path_of {
        cgroup_path_of::VICTIM => {
            let pid = rec.victim_tgid.get().or(rec.victim_tid.get()).unwrap_or(0);
            format!("pid {pid}'s cgroup")
        }
        cgroup_path_of::OOM_MEMCG => "the memcg whose limit fired".to_string(),
        _ => return,
    };
    let why = match rec.cgroup_walk_end {
        cgroup_walk_end::TOO_DEEP => {
            format!("is more than {MAX_CGROUP_DEPTH} levels below the root")
        }
        cgroup_walk_end::TOO_LONG => format!("has a path longer than {CGROUP_PATH_MAX} bytes"),
        _ => return,
    };
    log::warn!(
        "kill {}: {whose} {why}: its cgroup and memcg paths are null",
        rec.seq
    );
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
    let depth = (rec.memcg_depth as usize).min(CGROUP_LEVELS);
    if rec.memcg_complete == 0 || depth == 0 {
        return None;
    }
    let unlimited = page_counter_max(page_size);
    let oom_groups_known = rec.memcg_oom_group_known != 0;
    let known = |bit: u32| rec.memcg_counters_known & bit != 0;
    let levels: Vec<MemcgLevel> = (0..depth)
        .map(|i| {
            let (path, path_hex) = path_fields(chain.and_then(|c| c.path_of(rec.memcg_ids[i])));
            MemcgLevel {
                path,
                path_hex,
                usage_bytes: rec.memcg_usage_pages[i] * page_size,
                limit_bytes: (rec.memcg_max_pages[i] < unlimited)
                    .then(|| rec.memcg_max_pages[i] * page_size),
                oom_group: oom_groups_known.then_some(rec.memcg_oom_group[i] != 0),
                failcnt: known(memcg_counter::FAILCNT)
                    .then_some(rec.memcg_failcnt[i])
                    .filter(|&n| n != FAILCNT_UNTRACKED),
                peak_bytes: known(memcg_counter::WATERMARK)
                    .then(|| rec.memcg_watermark_pages[i] * page_size),
                events: memcg_events(&rec.memcg_events[i], rec.memcg_counters_known),
            }
        })
        .collect();
    let leaf = levels.first()?.clone();
    Some(Memcg {
        path: leaf.path,
        path_hex: leaf.path_hex,
        usage_bytes: leaf.usage_bytes,
        limit_bytes: leaf.limit_bytes,
        levels,
    })
}

/// One level's `memory.events`, each counter null where this kernel lacks
/// it; null altogether when it lacks them all.
fn memcg_events(counts: &MemcgEventCounts, known: u32) -> Option<MemcgEvents> {
    use memcg_counter as bit;
    let get = |flag: u32, value: u64| (known & flag != 0).then_some(value);
    let events = MemcgEvents {
        high: get(bit::EVENT_HIGH, counts.high),
        max: get(bit::EVENT_MAX, counts.max),
        oom: get(bit::EVENT_OOM, counts.oom),
        oom_kill: get(bit::EVENT_OOM_KILL, counts.oom_kill),
        oom_group_kill: get(bit::EVENT_OOM_GROUP_KILL, counts.oom_group_kill),
    };
    (events != MemcgEvents::default()).then_some(events)
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
        signal_kills: delta(now.kernel.signal_kills, reported.kernel.signal_kills),
    };
    if lost.kills
        + lost.exits
        + lost.untracked_victims
        + lost.events_dropped
        + lost.records_dropped
        + lost.signal_kills
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

/// The `heartbeat` record: alive, with the counters so far.
pub fn heartbeat(origin: &Origin, interval: std::time::Duration, counters: Counters) -> Heartbeat {
    let boot_ns = clock::boot_ns();
    Heartbeat {
        schema: SCHEMA_VERSION,
        origin: origin.clone(),
        time: clock::rfc3339_from_boot_ns(boot_ns),
        boot_ns,
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        counters,
    }
}

#[cfg(test)]
mod tests {
    use super::chain::tests::{blank, with_path};
    use super::*;
    use oomtrace_ebpf::{Known, OomContext};

    fn convert(kill: &KillEvent) -> OomKill {
        super::kill(kill, &Origin::default(), 4096, false).0
    }

    #[test]
    fn unread_fields_are_null_and_the_victim_untracked() {
        let (kill, tracking) = kill(
            &KillEvent::without_names(blank()),
            &Origin::default(),
            4096,
            false,
        );
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
        let tracking = |rec| {
            kill(
                &KillEvent::without_names(rec),
                &Origin::default(),
                4096,
                false,
            )
            .1
        };
        let mut rec = blank();
        rec.victim_key = Known::new(42);
        assert_eq!(tracking(rec), Tracking::Key(42));
        let mut rec = blank();
        rec.same_victim_as = Known::new(7);
        assert_eq!(tracking(rec), Tracking::SameAs(7));
    }

    #[test]
    fn memcg_levels_get_paths_and_unlimited_is_null() {
        let mut event = with_path(&[b"child", b"parent"], &[3, 2, 1]);
        let rec = &mut event.rec;
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
        let kill = convert(&event);
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
        let mut event = with_path(&[b"pod", b"kubepods"], &[7, 6, 1]);
        event.rec.cgroup_path_of = cgroup_path_of::OOM_MEMCG;
        event.rec.oom = Known::new(OomContext {
            constraint: 3,
            memcg_id: 7,
            ..OomContext::default()
        });
        let kill = convert(&event);
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
