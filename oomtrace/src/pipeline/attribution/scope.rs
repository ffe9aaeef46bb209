//! Which limit fired: the container's, the pod's, another cgroup's, or the
//! machine's.
//!
//! The memcg whose limit fired comes from `oom.memcg_path` when
//! oom_kill_process is hooked. Without that hook it can still be derived
//! from the memcg levels the kernel records at every kill:
//! [`nearest_limited_ancestor`].

use oomtrace_record::{LimitScope, MemcgLevel};

use super::cgroup_path::{components, locate};

/// Whose limit fired, from the victim's cgroup path and the path of the
/// memcg that hit its limit.
///
/// `global` (the kernel's `global` constraint) wins. Without a fired memcg
/// the answer is unknown (None), and so it is when the fired memcg is not
/// the victim's cgroup or an ancestor of it: the kernel only picks victims
/// inside the memcg that is out of memory, so such a pair is not one kill's.
pub fn limit_scope(
    victim_cgroup_path: &str,
    fired_memcg_path: Option<&str>,
    global: bool,
) -> Option<LimitScope> {
    if global {
        return Some(LimitScope::Node);
    }
    let fired = components(fired_memcg_path?)?;
    let victim = components(victim_cgroup_path)?;
    if !victim.starts_with(&fired) {
        return None;
    }
    // The root memcg has no limit of its own; the kernel treats running out
    // there as a global OOM.
    if fired.is_empty() {
        return Some(LimitScope::Node);
    }
    let located = locate(&victim);
    if located
        .container_depth
        .is_some_and(|depth| fired.len() >= depth)
    {
        return Some(LimitScope::Container);
    }
    if located.pod_depth == Some(fired.len()) {
        return Some(LimitScope::Pod);
    }
    Some(LimitScope::Cgroup)
}

/// `MEMCG_CHARGE_BATCH` (include/linux/memcontrol.h, 64 since v5.13, 32
/// before): the pages a CPU charges ahead into its per-cpu stock.
const MEMCG_CHARGE_BATCH: u64 = 64;

/// `1 << PAGE_ALLOC_COSTLY_ORDER`: mem_cgroup_oom() skips the OOM killer
/// for larger charges (they fail instead), so the charge that led to a kill
/// was at most 8 pages.
const MAX_OOM_CHARGE_PAGES: u64 = 8;

/// How far below its limit a memcg's usage can read when that limit fired.
///
/// The kernel charges a memcg's page counter leaf first, up to the root,
/// and the first level that would go over its max fails the charge. So at
/// that moment the failing level's usage was above `limit - charge` (at
/// most 8 pages, see [`MAX_OOM_CHARGE_PAGES`]). oomtrace reads the usage a
/// little later, at mark_victim, and by then two things can have lowered
/// it:
///
/// * per-cpu charge stocks: every CPU may hold up to
///   [`MEMCG_CHARGE_BATCH`] pages charged ahead, counted in usage but not
///   used. Chargers that hit the limit drain them (drain_all_stock(), run
///   asynchronously on each CPU), so usage drops by up to 64 pages per
///   CPU, plus up to one page per CPU of the byte-sized kernel-object
///   stock;
/// * memory freed by other tasks in the cgroup meanwhile, which has no
///   bound. Members of a `memory.oom.group` kill marked after others have
///   already exited can read well below the limit; `oom.memcg_path` is the
///   better source whenever it is there.
///
/// The margin is the first term, `(8 + 65 × CPUs) pages`, capped at an
/// eighth of the limit. The cap matters on small limits and big machines
/// (96 CPUs × 65 pages is 24 MiB): a level below 7/8 of its limit is not
/// plausibly the one that fired, and since the search goes leaf first, a
/// loose margin would blame a container that is merely busy when its pod's
/// limit fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChargeSlack {
    pub page_size: u64,
    /// CPUs that may hold a charge stock: the configured ones, an upper
    /// bound on the online ones.
    pub nr_cpus: u64,
}

impl ChargeSlack {
    /// This machine's page size (from `HostFacts`) and CPU count.
    pub fn for_this_host(page_size: u64) -> Self {
        // SAFETY: sysconf has no memory-safety preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        Self {
            page_size,
            nr_cpus: u64::try_from(cpus).unwrap_or(1).max(1),
        }
    }

    /// The most a fired limit's usage can read below `limit_bytes`.
    pub fn margin_bytes(&self, limit_bytes: u64) -> u64 {
        let pages = MAX_OOM_CHARGE_PAGES
            .saturating_add(self.nr_cpus.saturating_mul(MEMCG_CHARGE_BATCH + 1));
        pages.saturating_mul(self.page_size).min(limit_bytes / 8)
    }

    /// Whether usage is at its limit, within the margin (or above it: some
    /// charges are forced past the limit).
    pub fn at_limit(&self, usage_bytes: u64, limit_bytes: u64) -> bool {
        usage_bytes >= limit_bytes.saturating_sub(self.margin_bytes(limit_bytes))
    }
}

/// The index in `levels` (leaf first, as `memcg.levels`) of the nearest
/// memcg whose usage is at its limit: the honest derivation of which memcg
/// fired when oom_kill_process is not hooked. None when no limited level
/// is at its limit (a cgroup v1 `memory.memsw` limit, which these counters
/// do not show, or usage freed before the read; see [`ChargeSlack`]).
pub fn nearest_limited_ancestor(levels: &[MemcgLevel], slack: ChargeSlack) -> Option<usize> {
    levels.iter().position(|level| {
        level
            .limit_bytes
            .is_some_and(|limit| slack.at_limit(level.usage_bytes, limit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8d0a26fbd2dec0fbc2ffd5e0d4ff5cb2aab6ea8ab3f8e2a17e1d7ab92b53b0c4";
    const POD_SLICE: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f4e3c53_1a2b_4c5d_9e8f_0123456789ab.slice";
    const POD_DIR: &str = "/kubepods/burstable/pod0f4e3c53-1a2b-4c5d-9e8f-0123456789ab";

    fn scope(victim: &str, fired: &str) -> Option<LimitScope> {
        limit_scope(victim, Some(fired), false)
    }

    #[test]
    fn global_is_the_node_whatever_the_paths() {
        assert_eq!(limit_scope("/x", None, true), Some(LimitScope::Node));
        assert_eq!(limit_scope("", Some("/x"), true), Some(LimitScope::Node));
    }

    #[test]
    fn no_fired_memcg_is_unknown() {
        assert_eq!(limit_scope(&format!("/docker/{ID}"), None, false), None);
    }

    #[test]
    fn container_cgroup_or_inside_it_is_the_container() {
        let ctr = format!("{POD_SLICE}/cri-containerd-{ID}.scope");
        assert_eq!(scope(&ctr, &ctr), Some(LimitScope::Container));
        let crio = format!("{POD_SLICE}/crio-{ID}.scope");
        let leaf = format!("{crio}/container");
        assert_eq!(scope(&leaf, &crio), Some(LimitScope::Container));
        assert_eq!(scope(&leaf, &leaf), Some(LimitScope::Container));
        let docker = format!("/docker/{ID}");
        assert_eq!(
            scope(&format!("{docker}/inner/"), &format!("{docker}/")),
            Some(LimitScope::Container)
        );
        let bare = format!("{POD_DIR}/{ID}");
        assert_eq!(scope(&bare, &bare), Some(LimitScope::Container));
    }

    #[test]
    fn pod_cgroup_is_the_pod() {
        let ctr = format!("{POD_SLICE}/cri-containerd-{ID}.scope");
        assert_eq!(scope(&ctr, POD_SLICE), Some(LimitScope::Pod));
        assert_eq!(
            scope(&format!("{POD_DIR}/{ID}"), POD_DIR),
            Some(LimitScope::Pod)
        );
        // A pod-level victim (CRI-O's monitor) under its pod's limit.
        let conmon = format!("{POD_SLICE}/crio-conmon-{ID}.scope");
        assert_eq!(scope(&conmon, POD_SLICE), Some(LimitScope::Pod));
        assert_eq!(scope(&conmon, &conmon), Some(LimitScope::Cgroup));
    }

    #[test]
    fn other_ancestors_are_a_cgroup() {
        let ctr = format!("{POD_SLICE}/cri-containerd-{ID}.scope");
        assert_eq!(
            scope(&ctr, "/kubepods.slice/kubepods-burstable.slice"),
            Some(LimitScope::Cgroup)
        );
        assert_eq!(scope(&ctr, "/kubepods.slice"), Some(LimitScope::Cgroup));
        assert_eq!(
            scope(&format!("{POD_DIR}/{ID}"), "/kubepods/burstable"),
            Some(LimitScope::Cgroup)
        );
        assert_eq!(
            scope(&format!("/docker/{ID}"), "/docker"),
            Some(LimitScope::Cgroup)
        );
        let service = "/system.slice/nginx.service";
        assert_eq!(scope(service, service), Some(LimitScope::Cgroup));
        assert_eq!(scope(service, "/system.slice"), Some(LimitScope::Cgroup));
        assert_eq!(
            scope("/my/own/group", "/my/own/group"),
            Some(LimitScope::Cgroup)
        );
        // kind: the node container's limit is not the victim's container.
        let kind = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-pod0f4e3c53_1a2b_4c5d_9e8f_0123456789ab.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            scope(&kind, &format!("/system.slice/docker-{ID}.scope")),
            Some(LimitScope::Cgroup)
        );
    }

    #[test]
    fn root_is_the_node() {
        assert_eq!(
            scope("/system.slice/a.service", "/"),
            Some(LimitScope::Node)
        );
    }

    #[test]
    fn unrelated_or_malformed_paths_are_unknown() {
        assert_eq!(scope("/system.slice/a.service", "/user.slice"), None);
        assert_eq!(scope("/a/bc", "/a/b"), None);
        assert_eq!(scope("", "/"), None);
        assert_eq!(scope("/a", "a"), None);
        assert_eq!(scope("/a/../b", "/a"), None);
    }

    const PAGE: u64 = 4096;
    const MIB: u64 = 1 << 20;

    fn level(usage_bytes: u64, limit_bytes: Option<u64>) -> MemcgLevel {
        MemcgLevel {
            usage_bytes,
            limit_bytes,
            ..MemcgLevel::default()
        }
    }

    #[test]
    fn margin_is_the_charge_plus_the_stocks_capped_at_an_eighth() {
        let slack = ChargeSlack {
            page_size: PAGE,
            nr_cpus: 4,
        };
        assert_eq!(slack.margin_bytes(1 << 30), (8 + 4 * 65) * PAGE);
        assert_eq!(slack.margin_bytes(8 * MIB), MIB);
        assert_eq!(slack.margin_bytes(0), 0);
        assert!(slack.at_limit(0, 0));
        let big = ChargeSlack {
            page_size: 65536,
            nr_cpus: u64::MAX,
        };
        assert_eq!(big.margin_bytes(u64::MAX), u64::MAX / 8);
    }

    #[test]
    fn nearest_level_at_its_limit_leaf_first() {
        let slack = ChargeSlack {
            page_size: PAGE,
            nr_cpus: 4,
        };
        let margin = slack.margin_bytes(512 * MIB);
        let pod_at_limit = [
            level(100 * MIB, None),
            level(512 * MIB - margin, Some(512 * MIB)),
            level(2048 * MIB, None),
        ];
        assert_eq!(nearest_limited_ancestor(&pod_at_limit, slack), Some(1));
        // One byte further from the limit is not at it.
        let below = [level(512 * MIB - margin - 1, Some(512 * MIB))];
        assert_eq!(nearest_limited_ancestor(&below, slack), None);
        // A busy container under its own limit does not hide its pod's.
        let busy = [
            level(240 * MIB, Some(256 * MIB)),
            level(512 * MIB, Some(512 * MIB)),
        ];
        assert_eq!(nearest_limited_ancestor(&busy, slack), Some(1));
        // Both at their limits: the leaf's charge fails first.
        let both = [
            level(256 * MIB, Some(256 * MIB)),
            level(512 * MIB, Some(512 * MIB)),
        ];
        assert_eq!(nearest_limited_ancestor(&both, slack), Some(0));
        // Forced charges can push usage over the limit.
        let over = [level(300 * MIB, Some(256 * MIB))];
        assert_eq!(nearest_limited_ancestor(&over, slack), Some(0));
        assert_eq!(nearest_limited_ancestor(&[], slack), None);
        assert_eq!(nearest_limited_ancestor(&[level(MIB, None)], slack), None);
    }

    #[test]
    fn small_limits_on_big_machines_use_the_cap() {
        let slack = ChargeSlack {
            page_size: PAGE,
            nr_cpus: 96,
        };
        // 96 CPUs' stocks are 24 MiB: without the cap a 16 MiB container
        // using 1 MiB would count as at its limit.
        assert_eq!(
            nearest_limited_ancestor(&[level(MIB, Some(16 * MIB))], slack),
            None
        );
        assert_eq!(
            nearest_limited_ancestor(&[level(14 * MIB, Some(16 * MIB))], slack),
            Some(0)
        );
    }

    #[test]
    fn this_host_has_a_cpu() {
        assert!(ChargeSlack::for_this_host(PAGE).nr_cpus >= 1);
    }
}
