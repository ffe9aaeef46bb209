//! `oomtrace rank` against the kernel: processes of known sizes and
//! oom_score_adj values in a memcg with a limit, ranked with `rank --json
//! --cgroup`; then the memcg is pushed over its limit and the kernel's
//! victim (its `Killed process` line, and the `oom_kill` record of
//! `oomtrace run`) must be the one `rank` named.
//!
//! The push comes from one more process in the memcg, started after the
//! ranking, that allocates the memcg's headroom plus 8 MiB and then holds
//! it. Its badness at the OOM is at most that much memory with adj 0, and
//! every mix keeps the headroom small enough that it stays the lowest: the
//! test checks this from rank's own figures before pushing. One kill frees
//! more than the pusher still needs, so exactly one process dies.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{Workload, assert_sigkilled},
};

const MIB: u64 = 1 << 20;
/// The memcg's limit in every mix: 65,536 pages, 65 pages per adj point.
const LIMIT: u64 = 256 * MIB;
const PAGE: u64 = 4096;
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// One process of a mix: MiB it holds, its oom_score_adj.
#[derive(Clone, Copy, Debug)]
struct Holder {
    mib: u64,
    adj: i32,
}

/// `oomtrace rank --json --cgroup PATH`'s records.
pub fn rank_json(env: &Env, cgroup: &str) -> Vec<Value> {
    let out = Command::new(&env.oomtrace)
        .args(["rank", "--json", "--cgroup", cgroup])
        .output()
        .expect("run oomtrace rank");
    assert!(
        out.status.success(),
        "oomtrace rank: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("rank's output is UTF-8");
    text.lines()
        .map(|line| {
            let value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            crate::contract::assert_record(line, &value);
            value
        })
        .collect()
}

/// The mix's processes started and holding their memory, in a new memcg.
struct Mix {
    cg: MemCgroup,
    holders: Vec<Workload>,
}

fn start(env: &Env, hint: &str, mix: &[Holder]) -> Mix {
    let cg = MemCgroup::create(hint, Some(LIMIT));
    let mut holders = Vec::new();
    for h in mix {
        let mut w = Workload::spawn(
            env,
            "alloc",
            &[
                "--cgroup",
                cg.dir_str(),
                "--adj",
                &h.adj.to_string(),
                "--hold-mib",
                &h.mib.to_string(),
            ],
        );
        w.said("held");
        holders.push(w);
    }
    Mix { cg, holders }
}

/// Ranks the mix, checks the ranking against the mix, pushes the memcg over
/// its limit and checks that the kernel killed rank's next victim. `order`
/// is the kill order rank must give, as indexes into `mix`. Returns the
/// memcg's rank record.
fn predict_then_push(env: &Env, hint: &str, mix: &[Holder], order: &[usize]) -> Value {
    let mut m = start(env, hint, mix);
    let pids: Vec<u32> = m.holders.iter().map(Workload::pid).collect();
    let records = rank_json(env, &m.cg.path);
    let memcg = records
        .iter()
        .find(|r| r["type"] == "rank_memcg" && r["path"] == m.cg.path.as_str())
        .unwrap_or_else(|| panic!("no rank_memcg for {}: {records:?}", m.cg.path))
        .clone();

    // Headroom: the limit less what the kernel counts, as rank read it.
    assert_eq!(memcg["limit_bytes"], LIMIT, "{memcg}");
    let usage = memcg["usage_bytes"].as_u64().expect("usage");
    let held: u64 = mix.iter().map(|h| h.mib * MIB).sum();
    assert!(
        usage >= held && usage < held + 16 * MIB,
        "usage {usage} for {held} held: {memcg}"
    );
    assert_eq!(memcg["headroom_bytes"], LIMIT - usage, "{memcg}");
    let now = m.cg.usage();
    assert!(
        now.abs_diff(usage) < 2 * MIB,
        "usage now {now}, rank read {usage}"
    );
    assert_eq!(memcg["processes"], mix.len(), "{memcg}");
    assert_eq!(
        memcg["total_pages"],
        LIMIT / PAGE,
        "no swap: the limit alone"
    );

    // The order: every holder, in the expected order.
    let ranked: Vec<u64> = memcg["order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|c| c["pid"].as_u64().expect("pid"))
        .collect();
    let expected: Vec<u64> = order.iter().map(|&i| u64::from(pids[i])).collect();
    assert_eq!(ranked, expected, "kill order: {memcg:#}");
    let victim = pids[order[0]];
    assert_eq!(memcg["next_victim"]["pid"], victim, "{memcg:#}");
    assert_eq!(memcg["tied_with"], serde_json::json!([]), "{memcg:#}");

    // Each process as rank saw it.
    for (h, pid) in mix.iter().zip(&pids) {
        let p = records
            .iter()
            .find(|r| r["type"] == "rank_process" && r["pid"] == *pid)
            .unwrap_or_else(|| panic!("no rank_process for {pid}"));
        assert_eq!(p["oom_score_adj"], h.adj, "{p}");
        assert_eq!(p["memcg_path"], m.cg.path.as_str(), "{p}");
        let anon = p["rss_anon_bytes"].as_u64().expect("anon");
        assert!(anon >= h.mib * MIB && anon < (h.mib + 4) * MIB, "{p}");
        assert!(p["page_tables_bytes"].as_u64().expect("pte") > 0, "{p}");
        if h.adj == -1000 {
            assert_eq!(p["skipped"], "adj_min", "{p}");
        } else {
            assert_eq!(p["skipped"], Value::Null, "{p}");
        }
    }

    // The pusher: at most headroom + 8 MiB at adj 0, below the last
    // candidate's badness, so it cannot become the victim itself.
    let push_mib = (LIMIT - usage) / MIB + 8;
    let lowest = memcg["order"]
        .as_array()
        .and_then(|o| o.last())
        .and_then(|c| c["badness"].as_i64())
        .expect("a lowest candidate");
    let pusher_most = ((push_mib + 4) * MIB / PAGE) as i64;
    assert!(
        pusher_most < lowest,
        "the mix leaves too much headroom: the pusher ({pusher_most} pages) could outrank \
         {lowest}"
    );

    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut pusher = Workload::spawn(
        env,
        "alloc",
        &[
            "--cgroup",
            m.cg.dir_str(),
            "--adj",
            "0",
            "--hold-mib",
            &push_mib.to_string(),
        ],
    );
    let mut ours = pids.clone();
    ours.push(pusher.pid());
    let first = first_killed(&mut kmsg, &ours);
    assert_eq!(
        first, victim,
        "the kernel killed {first}, rank said {victim}: {memcg:#}"
    );
    assert_sigkilled(m.holders[order[0]].wait(), "rank's next victim");
    pusher.said("held");
    for (i, w) in m.holders.iter_mut().enumerate() {
        if i != order[0] {
            assert!(
                w.child.try_wait().expect("try_wait").is_none(),
                "holder {i} ({}) must survive: one kill was enough",
                w.pid()
            );
        }
    }
    let record = collector.kill_of(victim, KILL_TIMEOUT);
    assert_eq!(record["memcg"]["path"], m.cg.path.as_str(), "{record}");
    collector.stop_with(libc::SIGTERM);
    m.cg.remove();
    memcg
}

/// The pid of the first `Killed process` line about one of `pids`.
fn first_killed(kmsg: &mut Kmsg, pids: &[u32]) -> u32 {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        kmsg.poll();
        if let Some(k) = kmsg.seen().iter().find(|k| pids.contains(&k.pid)) {
            return k.pid;
        }
        assert!(
            Instant::now() < deadline,
            "no kill of {pids:?} in the kernel log within {KILL_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sizes alone: the largest dies.
pub fn rank_predicts_the_largest(env: &Env) {
    let mix = [
        Holder { mib: 52, adj: 0 },
        Holder { mib: 112, adj: 0 },
        Holder { mib: 72, adj: 0 },
    ];
    predict_then_push(env, "rank-size", &mix, &[1, 2, 0]);
}

/// adj changes the outcome: 64 MiB at adj 500 (+500 × 65 pages) outranks
/// 124 MiB at adj 0, as the kernel's arithmetic says.
pub fn rank_predicts_adj_over_size(env: &Env) {
    let mix = [
        Holder { mib: 124, adj: 0 },
        Holder { mib: 64, adj: 500 },
        Holder { mib: 48, adj: 0 },
    ];
    let memcg = predict_then_push(env, "rank-adj", &mix, &[1, 0, 2]);
    let victim = memcg["next_victim"]["badness"].as_i64().expect("badness");
    assert!(victim > 500 * 65, "{memcg}");
}

/// Near a tie: 64 MiB at adj 241 (241 × 65 = 15,665 pages on top of
/// 16,384) against 124 MiB (31,744 pages) at adj 0: about 300 pages, a
/// bit over 1 MiB, apart.
pub fn rank_predicts_a_near_tie(env: &Env) {
    let mix = [
        Holder { mib: 124, adj: 0 },
        Holder { mib: 64, adj: 241 },
        Holder { mib: 48, adj: 0 },
    ];
    let memcg = predict_then_push(env, "rank-near-tie", &mix, &[1, 0, 2]);
    let margin = memcg["margin_pages"].as_i64().expect("margin");
    assert!((1..1024).contains(&margin), "near, not tied: {memcg:#}");
}

/// adj -1000 is never killed (the VMs, where it can be set): the largest
/// process is exempt, rank leaves it out of the order, and the kernel
/// kills the next one.
pub fn rank_skips_adj_min(env: &Env) {
    let mix = [
        Holder {
            mib: 140,
            adj: -1000,
        },
        Holder { mib: 52, adj: 0 },
        Holder { mib: 44, adj: 0 },
    ];
    let memcg = predict_then_push(env, "rank-adj-min", &mix, &[1, 2]);
    assert_eq!(memcg["processes"], 3, "{memcg}");
}
