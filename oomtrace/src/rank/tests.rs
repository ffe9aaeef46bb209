//! The ranking's own parts: component-wise memcg paths, shared places, skip
//! reasons, and the arithmetic against the kernel's /proc/PID/oom_score.

use super::*;

#[test]
fn within_is_by_whole_components() {
    assert!(within("/a/b", "/a"));
    assert!(within("/a", "/a"));
    assert!(!within("/ab", "/a"));
    assert!(within("/anything", "/"));
    assert!(!within("/a", "/a/b"));
}

fn process(pid: u32, badness: Option<i64>) -> RankProcess {
    RankProcess {
        schema: 1,
        origin: Origin::default(),
        time: String::new(),
        boot_ns: 0,
        pid,
        comm: String::new(),
        oom_score: None,
        oom_score_adj: Some(0),
        rss_anon_bytes: None,
        rss_file_bytes: None,
        rss_shmem_bytes: None,
        swap_bytes: None,
        page_tables_bytes: None,
        node_badness: badness,
        node_rank: None,
        skipped: None,
        memcg_path: None,
        container: None,
        k8s: None,
        systemd_unit: None,
        unreadable: Vec::new(),
    }
}

/// The kernel's own score of this process, from its own badness:
/// the arithmetic and the /proc figures agree with the kernel.
#[test]
fn badness_gives_the_kernels_oom_score() {
    let ranker = Ranker::new().expect("a memory controller");
    let node = ranker.node_facts();
    let me = std::process::id();
    let read = procfs::read_all(Path::new("/proc")).expect("/proc");
    let p = read
        .into_iter()
        .find(|p| p.pid == me)
        .expect("this process");
    let memory = p.memory.expect("memory");
    let b = badness::badness(
        task_pages(&memory, node.page_size),
        p.adj.expect("adj"),
        node.total_pages,
    );
    let computed = badness::oom_score(b, node.total_pages);
    let kernel = p.oom_score.expect("oom_score");
    assert!(
        computed.abs_diff(kernel) <= 1,
        "computed {computed}, /proc says {kernel}"
    );
}

#[test]
fn ties_share_a_place_in_the_node_order() {
    let mut ps = vec![
        process(1, Some(5)),
        process(2, Some(9)),
        process(3, Some(9)),
        process(4, None),
        process(5, Some(-3)),
    ];
    node_ranks(&mut ps);
    let ranks: Vec<Option<u32>> = ps.iter().map(|p| p.node_rank).collect();
    assert_eq!(ranks, vec![Some(3), Some(1), Some(1), None, Some(4)]);
}

#[test]
fn skip_reasons_in_the_kernels_order() {
    let p = |pid, adj, memory: bool, unreadable: bool| procfs::Process {
        pid,
        adj: Some(adj),
        memory: memory.then(procfs::StatusMemory::default),
        no_mm: !memory,
        unreadable: if unreadable {
            vec!["status: permission denied".into()]
        } else {
            vec![]
        },
        ..procfs::Process::default()
    };
    assert_eq!(skip_reason(&p(1, 0, true, false)), Some(RankSkip::Init));
    assert_eq!(
        skip_reason(&p(2, -1000, false, false)),
        Some(RankSkip::NoMemory)
    );
    assert_eq!(
        skip_reason(&p(3, -1000, true, false)),
        Some(RankSkip::AdjMin)
    );
    assert_eq!(
        skip_reason(&p(4, 0, false, true)),
        Some(RankSkip::Unreadable)
    );
    assert_eq!(skip_reason(&p(5, 999, true, false)), None);
}
