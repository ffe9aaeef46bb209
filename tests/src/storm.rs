//! An OOM-kill storm: many memory cgroups, each killing a series of
//! allocators one after another, all cgroups at once. The benchmark
//! (`oomtrace-bench`) measures the collectors under it; correctness tests can
//! check every kill of it against the kernel's own counters.

use std::{
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{cgroup::MemCgroup, collector::Env, scenarios::Workload};

/// How long one allocator may take to be OOM-killed before the storm gives
/// up on it: with a limit of a few MiB it takes milliseconds, so this only
/// trips when something is broken (a limit that is not enforced, say).
const KILL_DEADLINE: Duration = Duration::from_secs(60);
/// How often a waiting thread looks at its allocator. Short, so that the
/// next allocator of the cgroup starts soon after the previous one is gone.
const POLL: Duration = Duration::from_millis(2);

/// One allocator the storm started, and how it ended.
#[derive(Clone, Debug)]
pub struct StormVictim {
    /// Its pid on the host.
    pub pid: u32,
    /// Its cgroup's path inside the hierarchy, as /proc/PID/cgroup (and
    /// oomtrace's `victim.cgroup.path`) shows it.
    pub cgroup: String,
    /// Its wait status: death by SIGKILL when the OOM killer took it.
    pub status: ExitStatus,
}

impl StormVictim {
    pub fn sigkilled(&self) -> bool {
        self.status.signal() == Some(libc::SIGKILL)
    }
}

/// What a storm did. The cgroups stay alive (so their kill counters can be
/// read) until this is dropped, which removes them.
pub struct StormOutcome {
    pub cgroups: Vec<MemCgroup>,
    /// Every allocator, in the order they ended.
    pub victims: Vec<StormVictim>,
    /// From the first allocator's start to the last one's end.
    pub elapsed: Duration,
    /// When the last allocator was reaped.
    pub ended: Instant,
}

impl StormOutcome {
    /// The kernel's own count: the sum of the cgroups' `oom_kill` counters.
    pub fn kernel_kills(&self) -> u64 {
        kernel_kills(&self.cgroups)
    }

    /// How many allocators died of SIGKILL (the shell's 137).
    pub fn sigkilled(&self) -> usize {
        self.victims.iter().filter(|v| v.sigkilled()).count()
    }

    pub fn victim(&self, pid: u32) -> Option<&StormVictim> {
        self.victims.iter().find(|v| v.pid == pid)
    }
}

/// The storm's memory cgroups, created before it starts so that their
/// counters can be read while it runs.
pub struct Storm {
    cgroups: Vec<MemCgroup>,
}

impl Storm {
    /// Creates `cgroups` memory cgroups limited to `limit` bytes.
    pub fn create(cgroups: usize, limit: u64) -> Self {
        assert!(cgroups > 0, "an empty storm");
        Self {
            cgroups: (0..cgroups)
                .map(|i| MemCgroup::create(&format!("storm{i}"), Some(limit)))
                .collect(),
        }
    }

    pub fn cgroups(&self) -> &[MemCgroup] {
        &self.cgroups
    }

    /// The kernel's count so far: the sum of the cgroups' `oom_kill` counters.
    pub fn kernel_kills(&self) -> u64 {
        kernel_kills(&self.cgroups)
    }

    /// In each cgroup at once (one thread per cgroup), runs
    /// `kills_per_cgroup` allocators (`oomtrace-workload alloc`) one after
    /// another, each until the OOM killer kills it. Returns once every
    /// allocator has been waited for.
    ///
    /// Sequential within a cgroup, so that each kill has exactly one
    /// candidate (the cgroup holds nothing else) and the victim is known in
    /// advance.
    pub fn run(&self, env: &Env, kills_per_cgroup: usize) -> (Vec<StormVictim>, Duration) {
        assert!(kills_per_cgroup > 0, "an empty storm");
        let victims = Mutex::new(Vec::with_capacity(self.cgroups.len() * kills_per_cgroup));
        let started = Instant::now();
        // Scoped threads: a panic in one (an allocator that is never killed)
        // reaches the caller; dropping the Storm then removes the cgroups
        // along with whatever is left in them.
        std::thread::scope(|scope| {
            for group in &self.cgroups {
                let victims = &victims;
                scope.spawn(move || {
                    for _ in 0..kills_per_cgroup {
                        let victim = run_until_killed(env, group);
                        victims.lock().expect("victims lock").push(victim);
                    }
                });
            }
        });
        (
            victims.into_inner().expect("victims lock"),
            started.elapsed(),
        )
    }

    /// Runs the storm (see [`Storm::run`]) and hands over the cgroups with
    /// its outcome.
    pub fn run_to_end(self, env: &Env, kills_per_cgroup: usize) -> StormOutcome {
        let (victims, elapsed) = self.run(env, kills_per_cgroup);
        StormOutcome {
            cgroups: self.cgroups,
            victims,
            elapsed,
            ended: Instant::now(),
        }
    }
}

/// Creates the cgroups and runs the storm: see [`Storm::run`].
pub fn storm(env: &Env, cgroups: usize, kills_per_cgroup: usize, limit: u64) -> StormOutcome {
    Storm::create(cgroups, limit).run_to_end(env, kills_per_cgroup)
}

fn kernel_kills(cgroups: &[MemCgroup]) -> u64 {
    cgroups.iter().map(MemCgroup::oom_kills).sum()
}

/// Runs one allocator in `group` and waits for it to end.
fn run_until_killed(env: &Env, group: &MemCgroup) -> StormVictim {
    let mut workload = Workload::spawn(env, "alloc", &["--cgroup", group.dir_str()]);
    let deadline = Instant::now() + KILL_DEADLINE;
    let status = loop {
        match workload.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            // Workload's Drop kills and reaps it.
            Ok(None) => panic!(
                "allocator {} in {} was not OOM-killed within {KILL_DEADLINE:?} \
                 (limit not enforced?)",
                workload.pid(),
                group.path
            ),
            Err(e) => panic!("waiting for allocator {}: {e}", workload.pid()),
        }
    };
    StormVictim {
        pid: workload.pid(),
        cgroup: group.path.clone(),
        status,
    }
}
