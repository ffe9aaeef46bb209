//! The memory sampler against real OOM kills: a leak, a spike after a flat
//! stretch, a tmpfs filling the limit, and a cgroup born and killed between
//! two samples. Each checks `memory.growth`, the history, and the victim's
//! `memory.stat` against what the kernel says of the victim.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::{KilledProcess, Kmsg},
    scenarios::{LIMIT, assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const MIB: u64 = 1 << 20;
/// What the cgroup holds besides what the workload allocates on purpose:
/// its binary, libraries, stack and page tables.
const SLACK: u64 = 8 * MIB;

/// A private tmpfs mounted on a fresh directory under the temp dir,
/// unmounted (and the directory removed) on drop, on every path.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("oomtrace-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let target = CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
        let options = CString::new(format!("size={size_mib}m,mode=0700")).expect("no NUL");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            let error = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            panic!("mount tmpfs on {}: {error}", dir.display());
        }
        // Private: its unmount and contents concern no other mount namespace.
        // SAFETY: as above; only the propagation flag changes.
        unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).expect("no NUL");
        // Detached: a file still open (a writer not yet reaped) cannot keep
        // it mounted. Its pages are freed when the last user goes.
        // SAFETY: umount2(2) with a NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "warning: umount {}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            );
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Shows what the sampler made of the kill (for `--nocapture`).
pub(crate) fn show(record: &Value) {
    eprintln!("memory: {}", record["memory"]);
}

pub(crate) fn number(value: &Value, what: &str, record: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {record}"))
}

/// `history` as (ms before the kill, usage), oldest first, newest last.
pub(crate) fn history(record: &Value) -> Vec<(u64, u64)> {
    let points = record["memory"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no memory.history: {record}"));
    points
        .iter()
        .map(|p| (number(&p[0], "ms", record), number(&p[1], "usage", record)))
        .collect()
}

/// The victim's stat: its memcg, an age within an interval or two, the
/// working set as usage − inactive_file of the same sample, and its anon
/// within `anon` (bytes).
pub(crate) fn assert_victim_stat(
    record: &Value,
    cg: &MemCgroup,
    anon: std::ops::RangeInclusive<u64>,
) {
    let stat = &record["memory"]["stat"];
    assert_eq!(stat["path"], cg.path.as_str(), "memory.stat.path: {record}");
    let age = number(&stat["age_ms"], "age_ms", record);
    assert!(
        age <= 2_000,
        "a sample {age} ms old at 1 s intervals: {record}"
    );
    let usage = number(&stat["usage_bytes"], "usage", record);
    let inactive = number(&stat["inactive_file_bytes"], "inactive_file", record);
    assert_eq!(
        record["memory"]["working_set_bytes"],
        usage.saturating_sub(inactive),
        "working set = usage − inactive_file of the same sample: {record}"
    );
    let stat_anon = number(&stat["anon_bytes"], "anon", record);
    assert!(
        anon.contains(&stat_anon),
        "memory.stat.anon_bytes {stat_anon} outside {anon:?}: {record}"
    );
    assert!(usage <= LIMIT.max(usage), "{record}");
    assert_eq!(
        history(record).last().map(|p| p.1),
        Some(usage),
        "the newest history point is the stat's sample: {record}"
    );
}

/// Asserts the kernel's figures and the record's agree; returns the
/// victim's anon at the kill (`anon-rss` in dmesg, per process), to hold
/// the cgroup's sampled anon against.
fn anon_at_kill(record: &Value, kernel: &KilledProcess) -> u64 {
    assert_matches_kernel(record, kernel);
    kernel.anon_rss_kb * 1024
}

/// A steady leak at 16 MiB/s into a 160 MiB limit: `leak`, a slope within
/// a factor of 2 of the rate, an increasing history.
pub fn leak_is_a_leak(env: &Env) {
    leak_record(env);
}

/// [`leak_is_a_leak`]'s checked record (README's example).
pub fn leak_record(env: &Env) -> Value {
    assert_leak(env, 16, 160 * MIB, "leak")
}

/// A slow leak, 4 MiB/s into 64 MiB, at the default interval: the same.
pub fn slow_leak_is_a_leak(env: &Env) {
    assert_leak(env, 4, LIMIT, "slowleak");
}

/// A fast leak, 1 MiB every 25 ms (4 MiB per 100 ms, 40 MiB/s), into
/// 384 MiB at the default 1 s interval: about 9.6 s to the limit. The walk
/// that finds the cgroup comes within 3 intervals of its first process,
/// which leaves 6 or so samples, past the 4 a leak's fit needs (growth.rs,
/// `LEAK_MIN_POINTS`); no 3 of them lie within 5% of the limit of each
/// other (40 MiB apart), so it is no spike's flat stretch.
pub fn fast_leak_is_a_leak(env: &Env) {
    assert_leak(env, 40, 384 * MIB, "fastleak");
}

/// A leak of `rate_mib` MiB/s into `limit` in a cgroup named after `hint`:
/// `leak`, a slope within a factor of 2 of the rate, an increasing history,
/// and the victim's sampled anon where the leak had it.
fn assert_leak(env: &Env, rate_mib: u64, limit: u64, hint: &str) -> Value {
    let cg = MemCgroup::create(hint, Some(limit));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let started = Instant::now();
    let mut victim = Workload::spawn(
        env,
        "leak",
        &[
            "--cgroup",
            cg.dir_str(),
            "--rate-mib",
            &rate_mib.to_string(),
        ],
    );
    assert_sigkilled(victim.wait(), "the leaker");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);
    eprintln!("killed after {:?}", started.elapsed());

    let growth = &record["memory"]["growth"];
    assert_eq!(growth["kind"], "leak", "{record}");
    let slope = growth["slope_bytes_per_s"].as_f64().expect("slope") / MIB as f64;
    let rate = rate_mib as f64;
    assert!(
        slope > rate / 2.0 && slope < rate * 2.0,
        "slope {slope:.1} MiB/s for a {rate} MiB/s leak: {record}"
    );
    let points = history(&record);
    assert!(points.len() >= 3, "{record}");
    for pair in points.windows(2) {
        assert!(pair[0].0 > pair[1].0, "oldest first: {record}");
        assert!(
            pair[0].1 < pair[1].1,
            "usage rises sample by sample: {record}"
        );
    }
    let at_kill = anon_at_kill(&record, &kernel);
    let age = number(&record["memory"]["stat"]["age_ms"], "age", &record);
    // The sample was `age` ms before the kill: the leak added about
    // rate × age since (and the rounding of a paced step).
    let grown = rate_mib * MIB * (age + 500) / 1000 + SLACK;
    assert_victim_stat(
        &record,
        &cg,
        at_kill.saturating_sub(grown)..=at_kill + SLACK,
    );
    assert_eq!(
        record["memory"]["history_path"],
        cg.path.as_str(),
        "{record}"
    );
    record
}

/// 24 MiB held flat for 7 s, then everything at once: `spike`.
pub fn spike_after_idling_is_a_spike(env: &Env) {
    spike_record(env);
}

/// [`spike_after_idling_is_a_spike`]'s checked record.
pub fn spike_record(env: &Env) -> Value {
    let cg = MemCgroup::create("spike", Some(LIMIT * 2));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "spike",
        &[
            "--cgroup",
            cg.dir_str(),
            "--hold-mib",
            "24",
            "--hold-ms",
            "7000",
        ],
    );
    assert_sigkilled(victim.wait(), "the spiker");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);

    assert_eq!(record["memory"]["growth"]["kind"], "spike", "{record}");
    let points = history(&record);
    assert!(points.len() >= 3, "{record}");
    let at_kill = anon_at_kill(&record, &kernel);
    assert!(at_kill > LIMIT, "the spike took it to the limit: {record}");
    // The last sample saw the flat stretch: the 24 MiB held.
    assert_victim_stat(&record, &cg, 24 * MIB..=24 * MIB + SLACK);
    record
}

/// A tmpfs filled at 12 MiB/s into a 96 MiB limit: `shmem`, and the
/// victim's own anon (dmesg) and its cgroup's are both small.
pub fn tmpfs_fill_is_shmem(env: &Env) {
    tmpfs_record(env);
}

/// [`tmpfs_fill_is_shmem`]'s checked record.
pub fn tmpfs_record(env: &Env) -> Value {
    let limit = 96 * MIB;
    let cg = MemCgroup::create("tmpfs", Some(limit));
    // Dropped before the cgroup: the unmount frees the shmem charged to it.
    let tmpfs = Tmpfs::mount(512);
    let file = tmpfs.dir.join("fill");
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "tmpfs-fill",
        &[
            "--cgroup",
            cg.dir_str(),
            "--file",
            file.to_str().expect("utf-8"),
            "--rate-mib",
            "12",
        ],
    );
    assert_sigkilled(victim.wait(), "the tmpfs filler");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);

    assert_eq!(record["memory"]["growth"]["kind"], "shmem", "{record}");
    let at_kill = anon_at_kill(&record, &kernel);
    assert!(at_kill < SLACK, "the filler holds little anon: {record}");
    assert_victim_stat(&record, &cg, 0..=SLACK);
    let stat = &record["memory"]["stat"];
    let shmem = number(&stat["shmem_bytes"], "shmem", &record);
    let usage = number(&stat["usage_bytes"], "usage", &record);
    assert!(shmem * 2 >= usage, "shmem {shmem} of {usage}: {record}");
    drop(tmpfs);
    record
}

/// A cgroup created after the collector's first walk and killed at once,
/// with samples 5 s apart: never sampled, so no stat, no history and
/// `unknown`, not a guess.
pub fn born_and_killed_between_samples_is_unknown(env: &Env) {
    let mut collector = Collector::start(env, &["--sample-interval", "5s"]);
    let cg = MemCgroup::create("newborn", Some(LIMIT));
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);
    assert_matches_kernel(&record, &kernel);

    let memory = &record["memory"];
    assert!(memory.is_object(), "sampling is on: {record}");
    assert_eq!(memory["history"], serde_json::json!([]), "{record}");
    assert_eq!(memory["growth"]["kind"], "unknown", "{record}");
    assert_eq!(
        memory["growth"]["slope_bytes_per_s"],
        Value::Null,
        "{record}"
    );
    assert_eq!(memory["stat"], Value::Null, "{record}");
    assert_eq!(memory["working_set_bytes"], Value::Null, "{record}");
    assert_eq!(memory["history_path"], Value::Null, "{record}");
}

/// `--sample-interval 0`: no sampler, `memory` null.
pub fn sampling_off_leaves_memory_null(env: &Env) {
    let cg = MemCgroup::create("nosample", Some(LIMIT));
    let mut collector = Collector::start(env, &["--sample-interval", "0"]);
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_eq!(record["memory"], Value::Null, "{record}");
}

/// A leak in a container whose pod's limit fires: the pod's memcg (which
/// holds no process itself) is sampled too, shown as `fired_stat`, and its
/// samples are the history, a leak.
pub fn pod_limit_leak_shows_the_pods_memory(env: &Env) {
    let mut pod = MemCgroup::create("mempod", Some(128 * MIB));
    let pod_path = pod.path.clone();
    let container = pod.child("container", None);
    let mut collector = Collector::start(env, &[]);
    let mut victim = Workload::spawn(
        env,
        "leak",
        &["--cgroup", container.dir_str(), "--rate-mib", "16"],
    );
    assert_sigkilled(victim.wait(), "the leaker");
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    show(&record);
    assert_eq!(
        record["oom"]["memcg_path"],
        pod_path.as_str(),
        "the pod's limit fired: {record}"
    );
    let memory = &record["memory"];
    assert_eq!(memory["stat"]["path"], container.path.as_str(), "{record}");
    assert_eq!(memory["fired_stat"]["path"], pod_path.as_str(), "{record}");
    let pod_usage = number(&memory["fired_stat"]["usage_bytes"], "usage", &record);
    let own_usage = number(&memory["stat"]["usage_bytes"], "usage", &record);
    assert!(
        pod_usage >= own_usage,
        "v1 and v2 usage is hierarchical: {record}"
    );
    assert_eq!(memory["history_path"], pod_path.as_str(), "{record}");
    assert_eq!(memory["growth"]["kind"], "leak", "{record}");
    assert!(
        memory["growth"]["seconds_to_limit"].as_f64().is_some(),
        "the pod has a limit: {record}"
    );
}
