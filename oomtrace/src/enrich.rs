//! Kernel records → output records: units, nulls for what was not read, the
//! cgroup paths rebuilt from the names the kernel walked, and the exit.

use oomtrace_ebpf::{
    CGROUP_NAMES_SIZE, ExitRecord, KillRecord, MAX_CGROUP_DEPTH, SOURCE_RAW_TRACEPOINT, exit_valid,
    kill_valid,
};

use crate::{
    clock,
    schema::{
        CgroupRef, Exit, Memcg, MemcgLevel, Oom, OomKill, Rss, SCHEMA_VERSION, Trigger, Victim,
        comm_fields,
    },
};

/// `PAGE_COUNTER_MAX` (LONG_MAX / PAGE_SIZE): a page_counter at or above
/// this has no limit.
fn page_counter_max(page_size: u64) -> u64 {
    (i64::MAX as u64) / page_size
}

/// The victim's cgroup hierarchy as the kernel walked it: every ancestor's
/// kernfs id with its path, leaf first, root last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CgroupChain {
    pub levels: Vec<(u64, String)>,
}

impl CgroupChain {
    /// Rebuilds the chain from `cgroup_names`/`cgroup_ids`: the victim's
    /// cgroup (`CGROUP_PATH`) or, from the classic tracepoint, the memcg
    /// whose limit fired (`OOM_MEMCG_PATH`). None unless the walk reached
    /// the root: a partial path is never passed off as a path.
    pub fn from_record(rec: &KillRecord) -> Option<Self> {
        if rec.valid & (kill_valid::CGROUP_PATH | kill_valid::OOM_MEMCG_PATH) == 0 {
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

fn bit<T>(rec: &KillRecord, flag: u64, value: T) -> Option<T> {
    (rec.valid & flag != 0).then_some(value)
}

/// The `oom_kill` record for a kill whose exit is not known yet.
pub fn oom_kill(rec: &KillRecord, page_size: u64) -> OomKill {
    use kill_valid as v;
    let chain = CgroupChain::from_record(rec);
    // The victim's own cgroup, as opposed to the fired memcg's ancestry.
    let victim_chain = chain.as_ref().filter(|_| rec.valid & v::CGROUP_PATH != 0);
    let (comm, comm_hex) = match bit(rec, v::VICTIM_COMM, &rec.victim_comm) {
        Some(raw) => {
            let (c, h) = comm_fields(raw);
            (Some(c), h)
        }
        None => (None, None),
    };
    let (trigger_comm, trigger_comm_hex) = match bit(rec, v::TRIGGER_COMM, &rec.trigger_comm) {
        Some(raw) => {
            let (c, h) = comm_fields(raw);
            (Some(c), h)
        }
        None => (None, None),
    };
    let victim = Victim {
        pid: bit(rec, v::VICTIM_TGID, rec.victim_tgid),
        tid: bit(rec, v::VICTIM_TID, rec.victim_tid),
        ns_pid: bit(rec, v::VICTIM_NS_PID, rec.victim_ns_pid),
        container_init: bit(rec, v::VICTIM_NS_PID, rec.victim_ns_pid == 1),
        comm,
        comm_hex,
        uid: bit(rec, v::VICTIM_UID, rec.victim_uid),
        oom_score_adj: bit(
            rec,
            v::VICTIM_OOM_SCORE_ADJ,
            rec.victim_oom_score_adj as i16,
        ),
        total_vm_bytes: bit(rec, v::TOTAL_VM, rec.total_vm_bytes),
        pgtables_bytes: bit(rec, v::PGTABLES, rec.pgtables_bytes),
        rss: Rss {
            anon_bytes: bit(rec, v::RSS_ANON, rec.rss_anon_bytes),
            file_bytes: bit(rec, v::RSS_FILE, rec.rss_file_bytes),
            shmem_bytes: bit(rec, v::RSS_SHMEM, rec.rss_shmem_bytes),
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
    let oom = if rec.valid & v::OOM_CONTEXT != 0 {
        Oom {
            constraint: Some(constraint_name(rec.oom_constraint)),
            memcg_path: (rec.oom_memcg_id != 0)
                .then(|| {
                    chain
                        .as_ref()?
                        .path_of(rec.oom_memcg_id)
                        .map(str::to_string)
                })
                .flatten(),
            points: Some(rec.oom_chosen_points),
            totalpages: Some(rec.oom_totalpages),
            chosen_pid: Some(rec.oom_chosen_tgid),
            ..Oom::default()
        }
    } else {
        Oom::default()
    };
    OomKill {
        schema: SCHEMA_VERSION,
        seq: rec.seq,
        time: clock::rfc3339_from_boot_ns(rec.boot_ns),
        boot_ns: rec.boot_ns,
        source: if rec.source == SOURCE_RAW_TRACEPOINT {
            "raw_tracepoint"
        } else {
            "tracepoint"
        }
        .into(),
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
    }
}

/// `enum oom_constraint` in include/linux/oom.h.
fn constraint_name(value: u32) -> String {
    match value {
        0 => "global".into(),
        1 => "cpuset".into(),
        2 => "mempolicy".into(),
        3 => "memcg".into(),
        other => format!("unknown({other})"),
    }
}

fn memcg(rec: &KillRecord, chain: Option<&CgroupChain>, page_size: u64) -> Option<Memcg> {
    let depth = (rec.memcg_depth as usize).min(MAX_CGROUP_DEPTH);
    if rec.valid & kill_valid::MEMCG_LEVELS == 0 || depth == 0 {
        return None;
    }
    let unlimited = page_counter_max(page_size);
    let levels: Vec<MemcgLevel> = (0..depth)
        .map(|i| MemcgLevel {
            path: chain
                .and_then(|c| c.path_of(rec.memcg_ids[i]))
                .map(str::to_string),
            usage_bytes: rec.memcg_usage_pages[i] * page_size,
            limit_bytes: (rec.memcg_max_pages[i] < unlimited)
                .then(|| rec.memcg_max_pages[i] * page_size),
            oom_group: bit(
                rec,
                kill_valid::MEMCG_OOM_GROUP,
                rec.memcg_oom_group[i] != 0,
            ),
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

/// The wait status do_exit() stored, as a shell would report it.
pub fn exit_from(kill_boot_ns: u64, exit: &ExitRecord) -> Exit {
    let delay_ms = exit.boot_ns.saturating_sub(kill_boot_ns) as f64 / 1e6;
    let delay_ms = (delay_ms * 1000.0).round() / 1000.0;
    if exit.valid & exit_valid::EXIT_CODE == 0 {
        return Exit {
            observed: true,
            code: None,
            signal: None,
            delay_ms: Some(delay_ms),
        };
    }
    let signal = exit.exit_code & 0x7f;
    let (code, signal) = if signal != 0 {
        (128 + signal, Some(signal))
    } else {
        ((exit.exit_code >> 8) & 0xff, None)
    };
    Exit {
        observed: true,
        code: Some(code),
        signal,
        delay_ms: Some(delay_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zeroed record (all-zero is a valid KillRecord).
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
        rec.valid = kill_valid::CGROUP_PATH;
        rec
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
        partial.valid = 0;
        assert_eq!(CgroupChain::from_record(&partial), None);
        let mut lying = with_path(&["a"], &[5]);
        lying.cgroup_depth = 3; // more levels than names: refuse
        assert_eq!(CgroupChain::from_record(&lying), None);
    }

    #[test]
    fn unread_fields_are_null() {
        let rec = blank();
        let kill = oom_kill(&rec, 4096);
        let json = serde_json::to_value(&kill).expect("json");
        assert!(json["victim"]["pid"].is_null());
        assert!(json["victim"]["rss"]["anon_bytes"].is_null());
        assert!(json["victim"]["cgroup"]["path"].is_null());
        assert!(json["oom"]["constraint"].is_null());
        assert!(json["memcg"].is_null());
        assert_eq!(json["exit"]["observed"], false);
    }

    #[test]
    fn memcg_levels_get_paths_and_unlimited_is_null() {
        let mut rec = with_path(&["child", "parent"], &[3, 2, 1]);
        rec.valid |= kill_valid::MEMCG_LEVELS | kill_valid::OOM_CONTEXT;
        rec.memcg_depth = 3;
        rec.memcg_ids[..3].copy_from_slice(&[3, 2, 1]);
        rec.memcg_usage_pages[..3].copy_from_slice(&[10, 25, 1000]);
        rec.memcg_max_pages[..3].copy_from_slice(&[u64::MAX >> 1, 25, page_counter_max(4096)]);
        rec.oom_constraint = 3;
        rec.oom_memcg_id = 2;
        let kill = oom_kill(&rec, 4096);
        let memcg = kill.memcg.expect("memcg");
        assert_eq!(memcg.path.as_deref(), Some("/parent/child"));
        assert_eq!(memcg.limit_bytes, None);
        assert_eq!(memcg.levels[1].limit_bytes, Some(25 * 4096));
        assert_eq!(memcg.levels[2].path.as_deref(), Some("/"));
        assert_eq!(memcg.levels[2].limit_bytes, None);
        assert_eq!(kill.oom.constraint.as_deref(), Some("memcg"));
        assert_eq!(kill.oom.memcg_path.as_deref(), Some("/parent"));
    }

    /// From the classic tracepoint the buffer holds the fired memcg's path:
    /// it names `oom.memcg_path` and never poses as the victim's cgroup.
    #[test]
    fn fired_memcg_path_is_not_the_victims_cgroup() {
        let mut rec = with_path(&["pod", "kubepods"], &[7, 6, 1]);
        rec.valid = kill_valid::OOM_MEMCG_PATH | kill_valid::OOM_CONTEXT;
        rec.oom_constraint = 3;
        rec.oom_memcg_id = 7;
        let kill = oom_kill(&rec, 4096);
        assert_eq!(kill.oom.memcg_path.as_deref(), Some("/kubepods/pod"));
        assert_eq!(kill.victim.cgroup.path, None);
        assert_eq!(kill.victim.cgroup.id, None);
        assert!(kill.memcg.is_none());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let exit = |code, valid| ExitRecord {
            boot_ns: 3_500_000,
            exit_code: code,
            valid,
            ..Default::default()
        };
        let killed = exit_from(1_000_000, &exit(9, exit_valid::EXIT_CODE));
        assert_eq!((killed.code, killed.signal), (Some(137), Some(9)));
        assert_eq!(killed.delay_ms, Some(2.5));
        let normal = exit_from(0, &exit(3 << 8, exit_valid::EXIT_CODE));
        assert_eq!((normal.code, normal.signal), (Some(3), None));
        let unknown = exit_from(0, &exit(9, 0));
        assert!(unknown.observed && unknown.code.is_none());
    }
}
