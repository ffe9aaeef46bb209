//! Victims that cannot finish exiting.

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

use serde_json::Value;

use super::{
    KILL_TIMEOUT,
    storms::{assert_late_exit, late_exits_of},
};
use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{LIMIT, Workload, assert_exit_137, assert_identity, assert_matches_kernel},
};

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
/// thread group never finishes exiting. Dropping it ends the server
/// first, so that the stuck thread can leave.
struct StuckVictim {
    workload: Workload,
    cgroup: MemCgroup,
    mount: HungMount,
}

impl Drop for StuckVictim {
    /// The server goes first, so that the victim can finish exiting and
    /// the workload's own drop (which waits for it) returns, on a failed
    /// test's path too.
    fn drop(&mut self) {
        let _ = self.workload.child.kill();
        self.mount.release();
    }
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
/// is joined with its exit as usual, and the evicted one's exit, arriving
/// long after its record, is written as a `late_exit` naming that kill
/// (same `seq` and `run_id`), never as a second kill record.
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
    // The first mount goes away: the evicted victim's exit comes now, long
    // after its kill was written.
    let mut first = first;
    first.mount.release();
    let came = collector.wait_until(KILL_TIMEOUT, |records| {
        late_exits_of(records, &evicted).next().is_some()
    });
    assert!(
        came,
        "no late_exit for the evicted kill (seq {}) within {KILL_TIMEOUT:?} of its victim's \
         exit; records after start: {}",
        evicted["seq"],
        collector.records[1..]
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        collector.kills_of(first.pid()).len(),
        1,
        "one kill record per kill"
    );
    let late: Vec<&Value> = collector.late_exits().collect();
    assert_eq!(late.len(), 1, "one late exit, the evicted kill's: {late:?}");
    assert_late_exit(late[0], &evicted, Duration::ZERO);
    let stop = collector.stop_record();
    assert_eq!(stop["counters"]["kills"], 2, "{stop}");
    // Inline joins only: the late one is counted apart.
    assert_eq!(stop["counters"]["exits_observed"], 1, "{stop}");
    assert_eq!(stop["counters"]["late_exits"], 1, "{stop}");
    assert_eq!(stop["counters"]["exits_never_seen"], 0, "{stop}");
    assert_identity(&collector.records);
}
