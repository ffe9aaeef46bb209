//! OOMs that kill nobody: a memcg stalled at its limit, its tasks stuck,
//! reported as `oom_stall` start and end records.
//!
//! On cgroup v1 the OOM killer is switched off for the test's memcg
//! (`memory.oom_control` `oom_kill_disable 1`); on v2, which has no such
//! switch, the one task is at `oom_score_adj` -1000 (which needs
//! CAP_SYS_RESOURCE: the VMs have it, this host's root does not). Either
//! way the task allocating 48 MiB into a 32 MiB limit stops at the limit,
//! alive, until the test raises the limit; then it finishes and says so.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    cgroup::{MemCgroup, Version},
    collector::{Collector, Env},
    memory::{MIB, number},
    workload::Workload,
};

const LIMIT: u64 = 32 * MIB;
/// What the task touches: more than the limit.
const WANTS_MIB: u64 = 48;
/// The stall is held at least this long after its start record.
const HELD: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(30);
/// How far below the limit a stalled memcg's usage may sit: one charge
/// batch (64 pages) and a transparent huge page.
const SLACK: u64 = 64 * 4096 + 2 * MIB;

fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lets the stalled memcg go on every path: on v1 the OOM killer is
/// switched back on, so a task still stuck at the limit is killed (and the
/// cgroup can be removed) even when the test failed half-way.
struct KillSwitch<'a> {
    cg: &'a MemCgroup,
}

impl KillSwitch<'_> {
    fn disable(cg: &MemCgroup) -> KillSwitch<'_> {
        if cg.version == Version::V1 {
            write(cg, "memory.oom_control", "1");
        }
        KillSwitch { cg }
    }
}

impl Drop for KillSwitch<'_> {
    fn drop(&mut self) {
        if self.cg.version == Version::V1 {
            let _ = std::fs::write(self.cg.dir.join("memory.oom_control"), "0");
        }
    }
}

fn write(cg: &MemCgroup, file: &str, value: &str) {
    std::fs::write(cg.dir.join(file), value)
        .unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
}

/// True once the kernel says the memcg is in an OOM it does not resolve:
/// v1 `under_oom 1`, v2 `oom` counted at least twice with no `oom_kill`.
fn kernel_says_stalled(cg: &MemCgroup) -> bool {
    let read = |file: &str| std::fs::read_to_string(cg.dir.join(file)).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
    };
    match cg.version {
        Version::V1 => field(&read("memory.oom_control"), "under_oom") == Some(1),
        Version::V2 => {
            let events = read("memory.events");
            field(&events, "oom").unwrap_or(0) >= 2 && field(&events, "oom_kill") == Some(0)
        }
    }
}

/// A memcg at its limit with nobody to kill: an `oom_stall` start once it
/// lasted two samples, naming the memcg, its limit, its usage and the stuck
/// task; an `end` after the test raised the limit, with a duration that
/// covers the stall; no `oom_kill`, and the kernel's count of kills 0.
pub fn stall_is_reported_from_start_to_end(env: &Env) {
    stall_records(env);
}

/// [`stall_is_reported_from_start_to_end`]'s checked start and end records.
pub fn stall_records(env: &Env) -> (Value, Value) {
    let cg = MemCgroup::create("stall", Some(LIMIT));
    let switch = KillSwitch::disable(&cg);
    let mut collector = Collector::start(env, &[]);
    let spawned = boot_ns();
    let mut args = vec!["--cgroup", cg.dir_str(), "--hold-mib", "48"];
    if cg.version == Version::V2 {
        args.extend(["--adj", "-1000"]);
    }
    let mut task = Workload::spawn(env, "alloc", &args);
    let deadline = Instant::now() + TIMEOUT;
    while !kernel_says_stalled(&cg) {
        assert!(Instant::now() < deadline, "the memcg never stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen_stalled = boot_ns();
    eprintln!("the kernel says stalled at {seen_stalled}");
    let start = collector.record_matching("oom_stall", |r| r["path"] == cg.path.as_str(), TIMEOUT);
    eprintln!("start: {start}");
    let usage_at_start = cg.usage();
    assert_eq!(start["phase"], "start", "{start}");
    let cause = match cg.version {
        Version::V1 => "oom_kill_disabled",
        Version::V2 => "no_killable_task",
    };
    assert_eq!(start["cause"], cause, "{start}");
    assert_eq!(start["limit_bytes"], LIMIT, "{start}");
    let usage = number(&start["usage_bytes"], "usage_bytes", &start);
    assert!(
        usage <= LIMIT && usage + SLACK >= LIMIT,
        "usage {usage} at a {LIMIT} limit: {start}"
    );
    assert!(
        usage.abs_diff(usage_at_start) <= SLACK,
        "usage {usage}, the cgroup's own file {usage_at_start}: {start}"
    );
    let since = number(&start["since_boot_ns"], "since_boot_ns", &start);
    assert!(since >= spawned, "the stall began after the task: {start}");
    assert!(
        number(&start["boot_ns"], "boot_ns", &start) > since,
        "two samples: {start}"
    );
    assert_stuck_task(&start, task.pid(), cg.version);
    if cg.version == Version::V2 {
        assert!(number(&start["ooms"], "ooms", &start) >= 1, "{start}");
    }
    assert!(
        kernel_says_stalled(&cg),
        "still stalled at the start record"
    );

    std::thread::sleep(HELD);
    let released = boot_ns();
    cg.set_limit(4 * LIMIT);
    assert_eq!(task.said("held"), WANTS_MIB as u32, "the task went on");
    let end = collector.record_matching(
        "oom_stall",
        |r| r["path"] == cg.path.as_str() && r["phase"] == "end",
        TIMEOUT,
    );
    eprintln!("end: {end}");
    let end_ns = number(&end["boot_ns"], "boot_ns", &end);
    assert!(end_ns >= released, "the end follows the release: {end}");
    assert_eq!(end["since_boot_ns"], start["since_boot_ns"], "{end}");
    let duration = number(&end["duration_ms"], "duration_ms", &end);
    assert_eq!(duration, (end_ns - since) / 1_000_000, "{end}");
    // Bracketed: the stall the test saw began no later than the first
    // sample that saw it (a memcg is followed from the walk after its first
    // process, and v2 needs a sample of its counters before: up to five
    // intervals late), and ended after the release.
    assert!(since <= released && seen_stalled <= released, "{end}");
    assert!(
        duration >= (released - since) / 1_000_000,
        "{duration} ms covers the stall until its release: {end}"
    );
    assert!(duration >= HELD.as_millis() as u64, "{duration} ms: {end}");
    assert_eq!(cg.oom_kills(), 0, "the kernel killed nobody");
    drop(task);
    drop(switch);
    collector.stop_with(libc::SIGTERM);
    assert_eq!(
        collector.kills().count(),
        0,
        "no oom_kill record for a stall"
    );
    let stalls: Vec<&Value> = collector
        .of_type("oom_stall")
        .filter(|r| r["path"] == cg.path.as_str())
        .collect();
    assert_eq!(stalls.len(), 2, "one start, one end: {stalls:?}");
    assert_eq!(
        collector.stop_record()["counters"]["oom_stalls"],
        1,
        "{}",
        collector.stop_record()
    );
    (start, end)
}

/// The stuck task is listed with its comm and adj; on v1 it is parked in
/// the kernel's OOM wait (`D`).
fn assert_stuck_task(record: &Value, pid: u32, version: Version) {
    assert_eq!(record["tasks_total"], 1, "{record}");
    let task = &record["tasks"][0];
    assert_eq!(task["pid"], pid, "{record}");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(task["comm"], comm.trim_end(), "{record}");
    match version {
        Version::V1 => {
            assert_eq!(task["state"], "D", "parked in the OOM wait: {record}");
            assert_eq!(task["oom_score_adj"], 0, "{record}");
        }
        Version::V2 => {
            assert!(task["state"].is_string(), "{record}");
            assert_eq!(task["oom_score_adj"], -1000, "{record}");
        }
    }
}
