//! The memory sampler with 2,000 memcgs present, each holding one idle
//! process: its memory stays within its caps (docs/schema.md, "memory"),
//! the `stop` counters say what the cap turned away, and a kill in one more
//! memcg is still recorded right.
//!
//! Three collectors run in turn among the same 2,000 memcgs: one with
//! sampling off (the baseline RSS), one whose cap holds them all (histories
//! of 60 samples, filled in 12 s at 200 ms), and one whose memory cap holds
//! fewer (a 600 s window: 600 samples a memcg, 32 MiB / 48 KiB = 694
//! memcgs), which must refuse the rest.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::{MemCgroup, Version, memory_mount},
    collector::{Collector, Env},
    kmsg::Kmsg,
    memory::{MIB, assert_victim_stat, history, number, show},
    scenarios::{assert_cgroup, assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

/// The memcgs present, each with one process.
pub const CROWD: usize = 2000;
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// The sampler's cap on its histories (`MAX_STORE_BYTES`, docs/schema.md).
const MAX_STORE_BYTES: u64 = 32 * MIB;
/// One sample in a history (`store::Point`: 10 × 8 bytes), and what a
/// memcg's history takes besides its samples (`store::bytes_per_cgroup`:
/// its `Series` and 256 bytes for its map entry and path).
const SAMPLE_BYTES: u64 = 80;
const SERIES_BYTES: u64 = 56 + 256;
/// Per memcg followed, outside the histories: its open files and their
/// map entry, and its path in the walk's set (up to twice the cap).
const FILES_BYTES: u64 = 1024;
/// The allocator's share: arenas, fragmentation, the walk's transient
/// strings.
const ALLOCATOR_SLACK: u64 = 4 * MIB;

/// `CROWD` memcgs under one parent, each holding one `sleep`; on drop (a
/// panic too) the sleepers are killed and reaped, then every memcg removed.
struct Crowd {
    sleepers: Vec<Child>,
    parent: MemCgroup,
}

impl Crowd {
    fn gather() -> Self {
        let mut crowd = Self {
            sleepers: Vec::with_capacity(CROWD),
            parent: MemCgroup::create("crowd", None),
        };
        for i in 0..CROWD {
            let procs = crowd
                .parent
                .child(&format!("m{i}"), None)
                .dir
                .join("cgroup.procs");
            // No pipes: 2,000 children must not hold this process's fds.
            let sleeper = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn sleep {i}: {e}"));
            let pid = sleeper.id();
            crowd.sleepers.push(sleeper);
            std::fs::write(&procs, pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
        }
        crowd
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for sleeper in &mut self.sleepers {
            let _ = sleeper.kill();
        }
        for sleeper in &mut self.sleepers {
            let _ = sleeper.wait();
        }
        // `parent` drops next: its children's directories, then its own.
    }
}

/// The memcgs the sampler wants to follow: those holding processes and
/// their ancestors, the root left out, as scan.rs finds them.
fn memcgs_with_processes(dir: &Path, version: Version, top: bool) -> (usize, bool) {
    let mut count = 0;
    let mut populated = match version {
        Version::V1 => !std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .trim()
            .is_empty(),
        Version::V2 => {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
            if !events.lines().any(|l| l == "populated 1") {
                return (0, false);
            }
            true
        }
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let (below, any) = memcgs_with_processes(&entry.path(), version, false);
            count += below;
            populated |= any;
        }
    }
    let sampled = version == Version::V1 || dir.join("memory.current").exists();
    if populated && sampled && !top {
        count += 1;
    }
    (count, populated)
}

/// A field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The collector's own account of its caps, from `-v`'s log line
/// `... up to N memcgs of P samples`: (N, P).
fn caps(collector: &Collector) -> (u64, u64) {
    let log = collector.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("sampling memory every"))
        .unwrap_or_else(|| panic!("no sampler line in the log:\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |word: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
        words[i + 1].parse().expect("a number")
    };
    (after("to"), after("of"))
}

struct Figures {
    rss: u64,
    hwm: u64,
}

/// A leak of 16 MiB/s into 160 MiB in a memcg of its own, killed; returns
/// the record, checked against the kernel's own account of the kill.
fn leak_killed(env: &Env, collector: &mut Collector, cg: &MemCgroup) -> Value {
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "leak", &["--cgroup", cg.dir_str(), "--rate-mib", "16"]);
    assert_sigkilled(victim.wait(), "the leaker");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);
    assert_matches_kernel(&record, &kernel);
    assert_cgroup(&record, cg, &kernel);
    record
}

/// Stops the collector: its RSS just before, and the stop record's
/// (evictions, refusals).
fn stop(mut collector: Collector) -> (Figures, u64, u64) {
    let pid = collector.pid();
    let figures = Figures {
        rss: status_bytes(pid, "VmRSS"),
        hwm: status_bytes(pid, "VmHWM"),
    };
    collector.stop_with(libc::SIGTERM);
    let counters = &collector.stop_record()["counters"];
    let count = |name: &str| {
        counters[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {counters}"))
    };
    (
        figures,
        count("sampler_evictions"),
        count("sampler_refusals"),
    )
}

/// What the sampler may add to the collector's memory with `cap` memcgs of
/// `points` samples: its histories (never past `MAX_STORE_BYTES`), the
/// files it holds open, and the allocator's share.
fn sampler_bound(cap: u64, points: u64) -> u64 {
    let histories = cap * (points * SAMPLE_BYTES + SERIES_BYTES);
    assert!(
        histories <= MAX_STORE_BYTES,
        "the cap of {cap} memcgs of {points} samples is past the documented 32 MiB"
    );
    histories + cap * FILES_BYTES + ALLOCATOR_SLACK
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// 2,000 idle memcgs, then the three collectors (see the module's doc).
pub fn sampler_within_its_cap_among_2000_memcgs(env: &Env) {
    let (version, root) = memory_mount();
    let crowd = Crowd::gather();
    let present = memcgs_with_processes(&root, version, true).0 as u64;
    assert!(present > CROWD as u64, "{present} memcgs with processes");

    // Sampling off: the collector's own memory, the baseline.
    let off = Collector::start(env, &["--sample-interval", "0"]);
    std::thread::sleep(Duration::from_secs(2));
    let (base, ..) = stop(off);
    eprintln!(
        "sampling off: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(base.rss),
        mib(base.hwm)
    );

    // Histories of 60 samples (as at the default 1 s for 60 s), full in
    // 12 s, for every memcg the cap holds.
    let started = Instant::now();
    let window = Duration::from_secs(12);
    let mut collector = Collector::start(
        env,
        &["-v", "--sample-interval", "200ms", "--sample-window", "12s"],
    );
    let (cap, points) = caps(&collector);
    assert_eq!(points, 60, "12 s at 200 ms");
    let cg = MemCgroup::create("crowdleak", Some(160 * MIB));
    let record = leak_killed(env, &mut collector, &cg);
    // One more memcg than counted (the leak's): does the cap hold them all?
    let wanted = present + 1;
    if cap >= wanted {
        assert_eq!(
            record["memory"]["growth"]["kind"], "leak",
            "followed among {present} memcgs: {record}"
        );
        let points = history(&record);
        assert!(points.len() >= 3, "{record}");
        assert!(
            points
                .windows(2)
                .all(|p| p[0].0 > p[1].0 && p[0].1 < p[1].1),
            "oldest first, rising: {record}"
        );
        assert_victim_stat(&record, &cg, 0..=160 * MIB);
    }
    // Every history full before the figures are read.
    if let Some(left) = (window + Duration::from_secs(2)).checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let (full, evictions, refusals) = stop(collector);
    let bound = sampler_bound(cap, points);
    eprintln!(
        "{wanted} memcgs, cap {cap} of {points} samples: VmRSS {:.1} MiB, VmHWM {:.1} MiB \
         (bound: +{:.1} MiB), {evictions} evictions, {refusals} refusals",
        mib(full.rss),
        mib(full.hwm),
        mib(bound)
    );
    if cap >= wanted {
        assert_eq!(
            (evictions, refusals),
            (0, 0),
            "a cap of {cap} holds all {wanted} memcgs"
        );
    } else {
        assert!(
            evictions + refusals > 0,
            "a cap of {cap} cannot hold {wanted} memcgs"
        );
    }
    assert!(
        full.rss <= base.rss + bound,
        "VmRSS {} with {cap} memcgs sampled: more than {} (sampling off) + {bound}",
        full.rss,
        base.rss
    );
    assert!(
        full.hwm <= base.hwm + bound,
        "VmHWM {} with {cap} memcgs sampled: more than {} (sampling off) + {bound}",
        full.hwm,
        base.hwm
    );
    drop(cg);

    // A window of 600 samples: the 32 MiB cap holds fewer memcgs than are
    // present, none of them has gone a whole window without growing (none
    // is that old), so the rest are refused, not evicted.
    let mut collector = Collector::start(env, &["-v", "--sample-window", "600s"]);
    let (cap, points) = caps(&collector);
    assert_eq!(points, 600, "600 s at 1 s");
    assert!(
        cap < present,
        "the 32 MiB cap of {points}-sample histories holds fewer than {present} memcgs: {cap}"
    );
    let cg = MemCgroup::create("crowdleak", Some(160 * MIB));
    let record = leak_killed(env, &mut collector, &cg);
    // Followed or not, depending on whether a walk reached it before the
    // cap was full: a leak if followed, else no history and `unknown`.
    let memory = &record["memory"];
    if memory["history"].as_array().is_some_and(|h| h.is_empty()) {
        assert_eq!(memory["growth"]["kind"], "unknown", "{record}");
        assert_eq!(memory["stat"], Value::Null, "{record}");
        assert_eq!(memory["working_set_bytes"], Value::Null, "{record}");
    } else {
        assert_eq!(memory["growth"]["kind"], "leak", "{record}");
        assert_eq!(memory["stat"]["path"], cg.path.as_str(), "{record}");
        number(&memory["working_set_bytes"], "working set", &record);
    }
    let (capped, evictions, refusals) = stop(collector);
    drop(cg);
    let bound = sampler_bound(cap, points);
    eprintln!(
        "{wanted} memcgs, cap {cap} of {points} samples: VmRSS {:.1} MiB, VmHWM {:.1} MiB \
         (bound: +{:.1} MiB), {evictions} evictions, {refusals} refusals",
        mib(capped.rss),
        mib(capped.hwm),
        mib(bound)
    );
    assert!(
        refusals > 0,
        "a cap of {cap} among {present} memcgs refuses some: {evictions} evictions"
    );
    assert!(
        capped.rss <= base.rss + bound,
        "VmRSS {} at the cap: more than {} + {bound}",
        capped.rss,
        base.rss
    );
    drop(crowd);
}
