//! The sampler's verdicts where the easy reading would be wrong: a steady
//! process killed by its neighbour's spike (not a leak), and page cache
//! that fills a limit (reclaimed, never killed).

use std::{
    os::unix::io::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    memory::{MIB, history, number, show},
    scenarios::{assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Besides what a workload allocates on purpose: binary, stack, tables.
const SLACK: u64 = 8 * MIB;

/// Two containers in a 96 MiB pod: one holds 60 MiB, flat, the whole
/// time; the other idles for 8 s (the sampler finds new memcgs within 3
/// intervals, and needs 3 flat samples), then allocates without end. The pod's limit
/// fires and the kernel kills the bigger one, the steady process. Its
/// record must not call that a leak: the pod's history (whose limit fired)
/// is flat, then jumps, a `spike`; and its own memory never moved.
pub fn steady_victim_of_a_neighbours_spike(env: &Env) {
    let mut pod = MemCgroup::create("neighbours", Some(96 * MIB));
    let pod_path = pod.path.clone();
    let steady_cg = pod.child("steady", None);
    let (steady_path, steady_dir) = (steady_cg.path.clone(), steady_cg.dir_str().to_string());
    let neighbour_dir = pod.child("neighbour", None).dir_str().to_string();
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut steady = Workload::spawn(
        env,
        "spike",
        &[
            "--cgroup",
            &steady_dir,
            "--hold-mib",
            "60",
            "--hold-ms",
            "600000",
        ],
    );
    steady.said_line("holding");
    let mut neighbour = Workload::spawn(
        env,
        "spike",
        &[
            "--cgroup",
            &neighbour_dir,
            "--hold-mib",
            "1",
            "--hold-ms",
            "8000",
        ],
    );
    assert_sigkilled(steady.wait(), "the steady process");
    assert_sigkilled(neighbour.wait(), "the neighbour, once alone at the limit");
    let kernel = kmsg.killed(steady.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(steady.pid(), KILL_TIMEOUT);
    show(&record);
    assert_matches_kernel(&record, &kernel);
    assert_eq!(record["oom"]["memcg_path"], pod_path.as_str(), "{record}");

    let memory = &record["memory"];
    assert_eq!(memory["history_path"], pod_path.as_str(), "{record}");
    assert_eq!(memory["growth"]["kind"], "spike", "not a leak: {record}");
    // The victim's own memcg: its 60 MiB, as held from the start.
    assert_eq!(memory["stat"]["path"], steady_path.as_str(), "{record}");
    let anon = number(&memory["stat"]["anon_bytes"], "anon", &record);
    assert!(
        (60 * MIB..=60 * MIB + SLACK).contains(&anon),
        "the steady process's anon {anon}: {record}"
    );
    let points = history(&record);
    assert!(points.len() >= 3, "{record}");
}

/// A file three times the limit read again and again by `cat` in a 64 MiB
/// cgroup: the page cache fills the limit and the kernel reclaims it. What
/// happens here, measured: no OOM kill, the reader exits 0, the cgroup's
/// peak reaches its limit. oomtrace writes no record for it.
pub fn page_cache_is_reclaimed_not_killed(env: &Env) {
    const LIMIT: u64 = 64 * MIB;
    let cg = MemCgroup::create("pagecache", Some(LIMIT));
    let file = CacheFile::write(3 * LIMIT);
    let mut collector = Collector::start(env, &[]);
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && for i in 1 2 3; do cat {} > /dev/null || exit 1; done",
            cg.dir_str(),
            file.path.display()
        ))
        .status()
        .expect("run sh");
    eprintln!(
        "read 3 × {} MiB in {:?}",
        3 * LIMIT / MIB,
        started.elapsed()
    );
    assert!(status.success(), "the reader was not killed: {status:?}");
    assert_eq!(cg.oom_kills(), 0, "the kernel reclaimed, killed nobody");
    let peak = cg.peak();
    assert!(
        peak > LIMIT - 8 * MIB && peak <= LIMIT,
        "the cache filled the limit: peak {peak}"
    );
    let _ = collector.stop_with(libc::SIGTERM);
    let written: Vec<&Value> = collector
        .kills()
        .filter(|k| k["victim"]["cgroup"]["path"] == cg.path.as_str())
        .collect();
    assert!(written.is_empty(), "no kill, no record: {written:?}");
}

/// A file on disk (under the workspace's target/, not a tmpfs) whose pages
/// are dropped from the page cache once written, so that reading it
/// charges them to the reader's cgroup. Removed on drop.
struct CacheFile {
    path: std::path::PathBuf,
}

impl CacheFile {
    fn write(bytes: u64) -> Self {
        use std::io::Write;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let path = dir.join(format!("oomtrace-pagecache-{}", std::process::id()));
        let mut f = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let chunk = vec![7u8; MIB as usize];
        for _ in 0..bytes / MIB {
            f.write_all(&chunk).expect("write the file");
        }
        f.sync_all().expect("fsync");
        // SAFETY: posix_fadvise(2) on our own open file.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        Self { path }
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
