//! The OOM killer's arithmetic, as mm/oom_kill.c does it (Linux 5.9 on,
//! where `oom_badness` returns a signed `long` and LONG_MIN for "skip"):
//!
//! ```c
//! points = get_mm_rss(mm) + get_mm_counter(mm, MM_SWAPENTS) +
//!          mm_pgtables_bytes(mm) / PAGE_SIZE;
//! adj *= totalpages / 1000;
//! points += adj;
//! ```
//!
//! `select_bad_process` keeps the task with the highest points; a task
//! whose points equal the chosen one's replaces it (`points <
//! chosen_points` skips, `==` does not), so among equals the last one in
//! the kernel's task iteration wins. That order is not visible from
//! userspace: ties are reported as ties.

/// oom_score_adj's minimum: such a task is never killed.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;

/// A task's memory as the kernel counts it for badness, in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskPages {
    /// anon + file + shmem resident pages (`get_mm_rss`).
    pub rss: u64,
    /// Swap entries (`MM_SWAPENTS`).
    pub swap: u64,
    /// Page-table bytes / PAGE_SIZE (`mm_pgtables_bytes(mm) / PAGE_SIZE`).
    pub page_tables: u64,
}

impl TaskPages {
    pub fn total(self) -> u64 {
        self.rss + self.swap + self.page_tables
    }
}

/// `oom_badness()`: None where the kernel returns LONG_MIN for an
/// adj of -1000 (the other LONG_MIN cases, no mm, kernel thread and init,
/// are the caller's to skip).
pub fn badness(pages: TaskPages, adj: i32, total_pages: u64) -> Option<i64> {
    if adj == OOM_SCORE_ADJ_MIN {
        return None;
    }
    // `unsigned long totalpages / 1000` first, then the signed multiply.
    let unit = i64::try_from(total_pages / 1000).unwrap_or(i64::MAX);
    let points = i64::try_from(pages.total()).unwrap_or(i64::MAX);
    Some(points.saturating_add(i64::from(adj).saturating_mul(unit)))
}

/// `proc_oom_score()`: the 0..2000 figure of /proc/PID/oom_score for a
/// badness against the node's totalpages (RAM + swap); 0 for a skipped
/// task. (The unit tests check the badness here against the kernel's
/// own /proc/PID/oom_score through it.)
#[cfg(test)]
pub fn oom_score(badness: Option<i64>, total_pages: u64) -> u64 {
    let Some(badness) = badness else {
        return 0;
    };
    let total = i64::try_from(total_pages.max(1)).unwrap_or(i64::MAX);
    let points = (1000 + badness.saturating_mul(1000) / total) * 2 / 3;
    u64::try_from(points).unwrap_or(0)
}

/// `mem_cgroup_get_max()` in pages: the memcg's limit, plus the swap it may
/// use (its swap limit, at most the node's swap) unless its swappiness is 0.
/// `swap_limit_pages` is v1's `memsw.limit - limit` or v2's `swap.max`
/// (None: no swap limit).
pub fn memcg_total_pages(
    limit_pages: u64,
    swap_limit_pages: Option<u64>,
    total_swap_pages: u64,
    swappiness: u64,
) -> u64 {
    let swap = if swappiness == 0 {
        0
    } else {
        swap_limit_pages.map_or(total_swap_pages, |s| s.min(total_swap_pages))
    };
    // `?: 1` in constrained_alloc: a limit of 0 divides nothing by zero.
    (limit_pages + swap).max(1)
}

/// Who the kernel kills among candidates (`(key, badness)`), and who is
/// next: the highest badness, every other task with exactly that badness
/// (the kernel's choice among them depends on its iteration order), and
/// the highest below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice<K> {
    pub victim: K,
    pub badness: i64,
    pub tied_with: Vec<K>,
    pub runner_up: Option<(K, i64)>,
}

pub fn choose<K: Copy>(candidates: impl IntoIterator<Item = (K, i64)>) -> Option<Choice<K>> {
    let mut sorted: Vec<(K, i64)> = candidates.into_iter().collect();
    // Stable: equal badness keeps the caller's order (pid order).
    sorted.sort_by_key(|c| std::cmp::Reverse(c.1));
    let (&(victim, top), rest) = sorted.split_first()?;
    let tied = rest.iter().take_while(|(_, b)| *b == top).count();
    Some(Choice {
        victim,
        badness: top,
        tied_with: rest[..tied].iter().map(|(k, _)| *k).collect(),
        runner_up: rest.get(tied).copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 256; // pages

    fn pages(rss: u64) -> TaskPages {
        TaskPages {
            rss,
            swap: 0,
            page_tables: 0,
        }
    }

    #[test]
    fn adj_is_a_quantity_of_memory_after_integer_division() {
        // A 256 MiB memcg: 65,536 pages, 65 per adj point (not 65.536).
        let total = 256 * MIB;
        assert_eq!(badness(pages(1000), 0, total), Some(1000));
        assert_eq!(badness(pages(1000), 1, total), Some(1065));
        assert_eq!(badness(pages(1000), 500, total), Some(1000 + 500 * 65));
        // adj * totalpages / 1000 would give 1000 + 32,768: not the kernel.
        assert_ne!(badness(pages(1000), 500, total), Some(1000 + 32_768));
        assert_eq!(badness(pages(1000), -10, total), Some(1000 - 650));
        // Below 1000 pages the unit is 0: adj changes nothing.
        assert_eq!(badness(pages(7), 1000, 999), Some(7));
    }

    #[test]
    fn rss_swap_and_page_tables_count_alike() {
        let task = TaskPages {
            rss: 100,
            swap: 20,
            page_tables: 3,
        };
        assert_eq!(badness(task, 0, 1 << 20), Some(123));
    }

    #[test]
    fn adj_min_is_never_a_candidate_but_minus_999_is() {
        assert_eq!(badness(pages(1 << 30), -1000, 1 << 20), None);
        // -999 leaves a negative badness: still eligible (5.9 on: the
        // kernel no longer clamps to 1, LONG_MIN is the only "skip").
        assert_eq!(badness(pages(100), -999, 1_000_000), Some(100 - 999_000));
    }

    #[test]
    fn a_smaller_task_with_a_higher_adj_wins() {
        let total = 256 * MIB;
        let big = badness(pages(120 * MIB), 0, total).expect("a value");
        let small = badness(pages(40 * MIB), 500, total).expect("a value");
        assert!(small > big, "{small} > {big}");
    }

    #[test]
    fn oom_score_matches_proc() {
        // 24 GiB, no swap: 6,291,456 pages.
        let total = 6_291_456;
        assert_eq!(oom_score(None, total), 0);
        assert_eq!(oom_score(Some(0), total), 666);
        // 1 GiB resident: 1000 + 262144*1000/6291456 = 1041 → 694.
        assert_eq!(oom_score(Some(262_144), total), 694);
        // adj 1000: the whole node on top.
        assert_eq!(oom_score(Some(total as i64 + 262_144), total), 1360);
        // adj -999 on a small task: negative badness, floor at 0.
        assert_eq!(
            oom_score(badness(pages(10), -999, total), total),
            (1000 + (10 - 999 * 6291) * 1000 / total as i64) as u64 * 2 / 3
        );
    }

    #[test]
    fn memcg_total_pages_follows_mem_cgroup_get_max() {
        assert_eq!(memcg_total_pages(65_536, None, 0, 60), 65_536);
        assert_eq!(memcg_total_pages(65_536, Some(1000), 500, 60), 66_036);
        assert_eq!(memcg_total_pages(65_536, Some(100), 500, 60), 65_636);
        assert_eq!(memcg_total_pages(65_536, None, 500, 60), 66_036);
        assert_eq!(memcg_total_pages(65_536, Some(100), 500, 0), 65_536);
        assert_eq!(memcg_total_pages(0, None, 0, 60), 1);
    }

    #[test]
    fn ties_are_ties_and_the_runner_up_is_below_them() {
        let c = choose([(1, 10), (2, 30), (3, 30), (4, 20)]).expect("a value");
        assert_eq!((c.victim, c.badness), (2, 30));
        assert_eq!(c.tied_with, vec![3]);
        assert_eq!(c.runner_up, Some((4, 20)));
        let alone = choose([(9, -5)]).expect("a value");
        assert_eq!(
            (alone.victim, alone.tied_with.len(), alone.runner_up),
            (9, 0, None)
        );
        assert_eq!(choose::<u32>([]), None);
    }
}
