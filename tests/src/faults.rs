//! Fault scenarios: what the collector does when the kernel or the world
//! misbehaves. Correctness only; speed is measured by `cargo xtask bench`.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, channel},
    },
    time::Duration,
};

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{LIMIT, Workload, assert_exit_137, assert_matches_kernel, assert_sigkilled},
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
