//! Fault scenarios: what the collector does when the kernel or the world
//! misbehaves. Correctness only; speed is measured by `cargo xtask bench`.

use std::{
    collections::HashSet,
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, channel},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{
        LIMIT, Workload, assert_cgroup, assert_exit_137, assert_matches_kernel, assert_sigkilled,
    },
    storm::{self, Storm, StormOutcome, StormVictim},
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A FUSE mount whose server (`oomtrace-workload fuse-hold`) reads every
/// request and answers none. Dropping it ends the server, which aborts the
/// connection and frees every waiter, then detaches the mount. One per
/// victim: FUSE serialises lookups in a directory (without
/// FUSE_PARALLEL_DIROPS), so a second victim on the same mount would block
/// on the first one's lock instead of sending its own request.
struct HungMount {
    dir: PathBuf,
    server: Workload,
    lines: Receiver<String>,
}

impl HungMount {
    fn create(env: &Env) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "oomtrace-test-{}-{}-fuse",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut server = Workload::spawn(env, "fuse-hold", &[dir.to_str().expect("utf-8")]);
        let stdout = server.child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mount = Self { dir, server, lines };
        mount.expect_line("mounted");
        mount
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8")
    }

    /// Waits for the server to print `line`.
    fn expect_line(&self, line: &str) {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(got) => assert_eq!(got, line, "the FUSE server's output"),
            Err(e) => panic!("the FUSE server did not print {line:?}: {e}"),
        }
    }

    /// Ends the server: the request it held fails, and its waiter wakes.
    fn release(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        self.release();
        if let Ok(dir) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A victim whose exit cannot come: one of its threads waits on a hung
/// FUSE mount in an uninterruptible sleep (a request the server has read
/// cannot be abandoned, request_wait_answer()), so after the OOM kill the
/// thread group never finishes exiting. Declared before the victim, the
/// mount is dropped after it: the victim's own drop kills it first, then
/// the server goes, and the stuck thread can leave.
struct StuckVictim {
    workload: Workload,
    cgroup: MemCgroup,
    mount: HungMount,
}

impl StuckVictim {
    fn spawn(env: &Env) -> Self {
        let mount = HungMount::create(env);
        let cgroup = MemCgroup::create("stuck", Some(LIMIT));
        let mut workload = Workload::spawn(
            env,
            "alloc",
            &[
                "--cgroup",
                cgroup.dir_str(),
                "--stuck-in",
                mount.dir_str(),
                "--wait-stdin",
            ],
        );
        // The server has read the lookup (FUSE_LOOKUP = 1): the thread is
        // now stuck.
        mount.expect_line("holding 1");
        workload.release();
        Self {
            workload,
            cgroup,
            mount,
        }
    }

    fn pid(&self) -> u32 {
        self.workload.pid()
    }
}

/// The join table is capped (`--max-pending`): with victims whose exits
/// never arrive, each new kill pushes the oldest waiting one out, written
/// at once with `exit.observed = false`, so the collector's memory stays
/// bounded. When the hung mount finally goes away, the kill still waiting
/// is joined with its exit as usual, and the late exit of the evicted one
/// adds nothing.
pub fn stuck_victims_are_evicted_at_the_cap(env: &Env) {
    let mut collector = Collector::start(env, &["--max-pending", "1", "--exit-wait", "120s"]);
    let mut kmsg = Kmsg::open();
    let first = StuckVictim::spawn(env);
    let first_kernel = kmsg.killed(first.pid(), KILL_TIMEOUT);
    let mut second = StuckVictim::spawn(env);
    let second_kernel = kmsg.killed(second.pid(), KILL_TIMEOUT);
    // The second kill evicts the first: written long before its 120 s
    // exit wait, without an exit.
    let evicted = collector.kill_of(first.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&evicted, &first_kernel);
    assert_eq!(evicted["exit"]["observed"], false, "{evicted}");
    assert!(evicted["exit"]["code"].is_null(), "{evicted}");
    assert!(
        collector
            .kills()
            .all(|r| r["victim"]["pid"] != second.pid()),
        "the second kill waits for its exit"
    );
    // The second mount goes away: that victim finishes exiting, and its
    // exit is joined.
    second.mount.release();
    let joined = collector.kill_of(second.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&joined, &second_kernel);
    assert_exit_137(&joined);
    assert_eq!(first.cgroup.oom_kills(), 1);
    assert_eq!(second.cgroup.oom_kills(), 1);
    // The first victim's late exit must not produce a second record.
    let mut first = first;
    first.mount.release();
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let first_records = collector
        .kills()
        .filter(|r| r["victim"]["pid"] == first.pid())
        .count();
    assert_eq!(first_records, 1, "one record per kill");
    let stop = collector.records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["counters"]["kills"], 2, "{stop}");
    assert_eq!(stop["counters"]["exits_observed"], 1, "{stop}");
}

/// A ring buffer with room for two kill records, and a collector that is
/// not reading (SIGSTOP) while six kills happen: the kernel counts every
/// record it could not queue, so the kills written plus the `lost` records'
/// counts equal the kernel's own oom_kill count, and every line is whole.
pub fn tiny_ring_buffer_counts_every_loss(env: &Env) {
    const KILLS: u64 = 6;
    // One page: a kill record is ~2 KiB, so two fit.
    let mut collector = Collector::start(
        env,
        &["--ring-buffer-bytes", "4096", "--exit-wait", "500ms"],
    );
    let cgroup = MemCgroup::create("pressure", Some(LIMIT));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGSTOP) };
    for _ in 0..KILLS {
        let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cgroup.dir_str()]);
        assert_sigkilled(victim.wait(), "the allocator");
    }
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGCONT) };
    assert_eq!(cgroup.oom_kills(), KILLS, "the kernel's count");
    // Let it drain and write what waits for exits that were lost.
    std::thread::sleep(Duration::from_secs(2));
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let delivered = collector.kills().count() as u64;
    let lost: u64 = collector
        .records
        .iter()
        .filter(|r| r["type"] == "lost")
        .map(|r| r["kills"].as_u64().expect("lost.kills"))
        .sum();
    assert!(
        lost > 0,
        "six kills cannot fit in one page: {:?}",
        collector.records
    );
    assert_eq!(delivered + lost, KILLS, "{:?}", collector.records);
    let stop = collector.records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], lost, "{stop}");
    assert_eq!(stop["counters"]["kills"], delivered, "{stop}");
}

/// The storm tests: 20 cgroups killing 10 allocators each, all at once.
const STORM_CGROUPS: usize = 20;
const STORM_KILLS_PER_CGROUP: usize = 10;
/// Room for an allocator's few MiB of code and stack, so that each kill
/// takes milliseconds.
const STORM_LIMIT: u64 = 16 << 20;

/// The storm's victims as the kernel saw them: every allocator died of
/// SIGKILL, and the cgroups' oom_kill counters add up to one kill each.
fn assert_storm_outcome(outcome: &StormOutcome) {
    let expected = STORM_CGROUPS * STORM_KILLS_PER_CGROUP;
    assert_eq!(outcome.victims.len(), expected, "allocators run");
    assert_eq!(outcome.sigkilled(), expected, "allocators SIGKILLed");
    assert_eq!(
        outcome.kernel_kills(),
        expected as u64,
        "the kernel's oom_kill counters"
    );
}

/// Whether `record`'s victim lived in one of the storm's cgroups.
fn in_cgroups(record: &Value, cgroups: &[MemCgroup]) -> bool {
    let path = record["victim"]["cgroup"]["path"].as_str();
    cgroups.iter().any(|c| path == Some(c.path.as_str()))
}

/// 200 OOM kills across 20 cgroups within a few seconds: every kill the
/// kernel counted is written exactly once, with the victim's pid, cgroup
/// (path and id) and figures as the kernel logged them, joined with its
/// exit 137.
pub fn storm_every_kill_once(env: &Env) {
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let outcome = storm::storm(env, STORM_CGROUPS, STORM_KILLS_PER_CGROUP, STORM_LIMIT);
    assert_storm_outcome(&outcome);
    for victim in &outcome.victims {
        collector.kill_of(victim.pid, KILL_TIMEOUT);
    }
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));

    for victim in &outcome.victims {
        let records: Vec<&Value> = collector
            .kills()
            .filter(|r| r["victim"]["pid"] == victim.pid)
            .collect();
        assert_eq!(
            records.len(),
            1,
            "one record for {}: {records:?}",
            victim.pid
        );
        let record = records[0];
        let kernel = kmsg.killed(victim.pid, KILL_TIMEOUT);
        assert_matches_kernel(record, &kernel);
        let cgroup = outcome
            .cgroups
            .iter()
            .find(|c| c.path == victim.cgroup)
            .expect("the victim's cgroup");
        assert_cgroup(record, cgroup, &kernel);
        assert_exit_137(record);
    }
    // Nothing else claims to be in the storm's cgroups.
    assert_eq!(
        collector
            .kills()
            .filter(|r| in_cgroups(r, &outcome.cgroups))
            .count(),
        outcome.victims.len(),
        "records for the storm's cgroups"
    );
    let stop = collector.records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], 0, "{stop}");
    assert_eq!(stop["counters"]["lost_exits"], 0, "{stop}");
    assert!(
        collector.records.iter().all(|r| r["type"] != "lost"),
        "no lost records"
    );
}

/// SIGTERM while a storm is under way: every kill the kernel had counted by
/// then (its record is queued before the count, in __oom_kill_process())
/// is written, each line whole and each victim once; the last line is
/// `stop` with counters that match what was written; exit status 0.
pub fn sigterm_mid_storm_flushes_everything(env: &Env) {
    let mut collector = Collector::start(env, &[]);
    let storm = Storm::create(STORM_CGROUPS, STORM_LIMIT);
    let in_storm = |r: &Value| in_cgroups(r, storm.cgroups());
    let (counted_before_sigterm, sigterm_at, (victims, _), storm_ended) =
        std::thread::scope(|scope| {
            let running = scope.spawn(|| {
                let ran = storm.run(env, STORM_KILLS_PER_CGROUP);
                (ran, Instant::now())
            });
            // A quarter of the storm written: well under way, far from done.
            let mut seen = HashSet::new();
            while seen.len() < STORM_CGROUPS * STORM_KILLS_PER_CGROUP / 4 {
                let record = collector.kill_matching(
                    |r| in_storm(r) && !seen.contains(&r["victim"]["pid"]),
                    KILL_TIMEOUT,
                );
                seen.insert(record["victim"]["pid"].clone());
            }
            let counted = storm.kernel_kills();
            let sigterm_at = Instant::now();
            let status = collector.stop_with(libc::SIGTERM);
            assert_eq!(status.code(), Some(0), "oomtrace's exit status");
            let (ran, ended) = running.join().expect("the storm");
            (counted, sigterm_at, ran, ended)
        });
    assert!(
        sigterm_at < storm_ended,
        "SIGTERM came after the storm: the test proves nothing"
    );
    assert_eq!(
        victims.len(),
        STORM_CGROUPS * STORM_KILLS_PER_CGROUP,
        "allocators run"
    );
    assert!(
        victims.iter().all(StormVictim::sigkilled),
        "every allocator died of SIGKILL"
    );
    let written: Vec<&Value> = collector.kills().filter(|r| in_storm(r)).collect();
    eprintln!(
        "SIGTERM mid-storm: {counted_before_sigterm} kills counted before it, {} written, {} in \
         the whole storm",
        written.len(),
        victims.len()
    );
    assert!(
        written.len() as u64 >= counted_before_sigterm,
        "{counted_before_sigterm} kills counted by the kernel before SIGTERM, {} written",
        written.len()
    );
    let mut pids = HashSet::new();
    for record in &written {
        let pid = record["victim"]["pid"].as_u64().expect("pid") as u32;
        assert!(pids.insert(pid), "written twice: {record}");
        let victim = victims
            .iter()
            .find(|v| v.pid == pid)
            .unwrap_or_else(|| panic!("not a storm victim: {record}"));
        assert_eq!(
            record["victim"]["cgroup"]["path"],
            victim.cgroup.as_str(),
            "{record}"
        );
        // Joined, or written at shutdown without its exit; never anything else.
        if record["exit"]["observed"] == true {
            assert_exit_137(record);
        } else {
            assert!(record["exit"]["code"].is_null(), "{record}");
        }
    }
    let stop = collector.records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["reason"], "SIGTERM", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], 0, "{stop}");
    assert_eq!(
        stop["counters"]["kills"].as_u64(),
        Some(collector.kills().count() as u64),
        "every kill the collector read was written: {stop}"
    );
}
