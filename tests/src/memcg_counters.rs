//! The memcg counters read in the kernel at the kill (`memcg.levels[].
//! failcnt`, `peak_bytes`, `events`), checked against the files the kernel
//! shows for the same cgroups right after: `memory.failcnt`,
//! `memory.max_usage_in_bytes` and `memory.oom_control` on cgroup v1,
//! `memory.peak` and `memory.events` on v2; and `oom.kernel_stat`, checked
//! against the kernel's own `Memory cgroup stats for` block in /dev/kmsg.

use serde_json::Value;

use crate::{
    cgroup::{MemCgroup, Version, oom_kill_count},
    collector::{Collector, Env},
    kmsg::{KilledProcess, Kmsg},
    scenarios::{KILL_TIMEOUT, LIMIT, Workload, assert_matches_kernel, assert_sigkilled},
};

/// Two kills, one after the other, in a limited cgroup under an unlimited
/// parent: each record's counters are those of its own moment (the first
/// says one kill, the second two), the parent counts its child's events on
/// v2 (memcg_memory_event() walks up the tree there, and stops at the
/// memcg itself on v1), and the limited level's peak is at its limit.
pub fn counters_at_the_kill(env: &Env) {
    let mut parent = MemCgroup::create("counters", None);
    let child = parent.child("limited", Some(LIMIT));
    let (child_path, child_dir) = (child.path.clone(), child.dir.clone());
    let version = parent.version;
    // On v1 the memory+swap counter is charged first, and with track_failcnt it
    // does not count its failures (track_failcnt is set for `memory`
    // only): with a memsw limit as low as the memory limit, both failcnts
    // stay 0. Without swap, memsw needs no limit, and the memory counter
    // is the one that fails.
    let memory_fails_first = version == Version::V1 && no_swap();
    if memory_fails_first {
        std::fs::write(child_dir.join("memory.memsw.limit_in_bytes"), "-1")
            .expect("lift the child's memsw limit");
    }
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    for kills_so_far in 1..=2u64 {
        let mut victim = Workload::spawn(
            env,
            "alloc",
            &["--cgroup", child_dir.to_str().expect("utf-8")],
        );
        assert_sigkilled(victim.wait(), "the allocator");
        let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
        let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
        assert_matches_kernel(&record, &kernel);
        assert_kernel_stat(&record, &kernel, &child_path);
        let files = CounterFiles::read(&child_dir, version);
        let levels = &record["memcg"]["levels"];
        let (child, above) = (&levels[0], &levels[1]);
        assert_eq!(child["path"], child_path.as_str(), "{record}");
        assert_eq!(above["path"], parent.path.as_str(), "{record}");

        // mark_victim comes after __oom_kill_process() counted this kill.
        let events = &child["events"];
        assert_eq!(events["oom_kill"], kills_so_far, "{record}");
        assert_eq!(files.oom_kill, kills_so_far, "the kernel's own count");
        let above_kills = if version == Version::V2 {
            kills_so_far
        } else {
            0
        };
        assert_eq!(above["events"]["oom_kill"], above_kills, "{record}");
        let oom = events["oom"].as_u64().expect("oom");
        assert!(oom >= kills_so_far, "every kill follows an OOM: {record}");
        let max = events["max"].as_u64().expect("max");
        assert!(
            max >= oom,
            "every OOM follows a charge at the limit: {record}"
        );
        if let Some(file_max) = files.max_events {
            assert!(
                max <= file_max,
                "max {max} > {file_max} read after: {record}"
            );
        }
        if let Some(file_oom) = files.oom_events {
            assert!(
                oom <= file_oom,
                "oom {oom} > {file_oom} read after: {record}"
            );
        }

        // The peak at the kill is at the limit (within the charge batch
        // the last allocation could not get), and no higher than after.
        let peak = child["peak_bytes"].as_u64().expect("peak_bytes");
        assert!(
            peak > LIMIT - (4 << 20) && peak <= LIMIT,
            "peak {peak}: {record}"
        );
        assert!(
            peak <= files.peak,
            "peak {peak} > {} read after",
            files.peak
        );
        let above_peak = above["peak_bytes"].as_u64().expect("parent peak_bytes");
        assert!(
            above_peak >= peak,
            "the parent holds its child's charge: {record}"
        );

        // failcnt: v1 counts every memcg's failed charges; v2 memcgs do on
        // kernels without page_counter::track_failcnt, and are null on
        // those with it, where memory.failcnt does not exist.
        match (version, &files.failcnt) {
            (Version::V1, Some(after)) => {
                let at = child["failcnt"].as_u64().expect("v1 failcnt");
                assert!(
                    at >= 1 && at <= *after,
                    "failcnt {at}, {after} after: {record}"
                );
                assert_eq!(above["failcnt"], 0, "the parent has no limit: {record}");
            }
            _ => assert!(
                child["failcnt"].is_null() || child["failcnt"].as_u64() >= Some(1),
                "{record}"
            ),
        }
    }
    let _ = collector.stop_with(libc::SIGTERM);
    parent.remove();
}

/// `oom.kernel_stat` is the block the kernel printed before this kill's
/// `oom-kill:` line, field for field; null when it printed none (its report
/// is ratelimited).
fn assert_kernel_stat(record: &Value, kernel: &KilledProcess, fired: &str) {
    let stat = &record["oom"]["kernel_stat"];
    let Some((path, fields)) = kernel.context.as_ref().and_then(|c| c.stat.as_ref()) else {
        assert!(stat.is_null(), "the kernel printed no stats: {record}");
        return;
    };
    assert_eq!(path, fired, "the kernel printed the fired memcg's stats");
    assert_eq!(stat["path"], fired, "{record}");
    let printed: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(name, value)| (name.clone(), Value::from(*value)))
        .collect();
    eprintln!(
        "kernel_stat of {path}: {} fields, as printed",
        printed.len()
    );
    assert!(printed.len() >= 10, "a whole memory.stat: {printed:?}");
    assert_eq!(stat["fields"], Value::Object(printed), "{record}");
    let anon = ["anon", "total_rss"]
        .iter()
        .find_map(|name| stat["fields"][name].as_u64())
        .expect("anon or total_rss");
    assert!(anon >= LIMIT / 2, "the allocator's memory: {record}");
}

/// Whether this machine has no swap device or file in use.
fn no_swap() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|swaps| swaps.lines().count() <= 1)
}

/// What the kernel's files say about a memcg, right after a kill.
struct CounterFiles {
    oom_kill: u64,
    peak: u64,
    /// v1's `memory.failcnt`.
    failcnt: Option<u64>,
    /// v2's `memory.events` `max` and `oom` lines.
    max_events: Option<u64>,
    oom_events: Option<u64>,
}

impl CounterFiles {
    fn read(dir: &std::path::Path, version: Version) -> Self {
        let number = |file: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let events = std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
        let event = |name: &str| -> Option<u64> {
            events
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let (peak, failcnt) = match version {
            Version::V1 => ("memory.max_usage_in_bytes", number("memory.failcnt")),
            Version::V2 => ("memory.peak", None),
        };
        Self {
            oom_kill: oom_kill_count(dir, version),
            peak: number(peak).expect("the peak file"),
            failcnt,
            max_events: event("max"),
            oom_events: event("oom"),
        }
    }
}
