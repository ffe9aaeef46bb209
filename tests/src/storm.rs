//! An OOM-kill storm: many memory cgroups, each killing a series of victims
//! one after another, all cgroups at once. The benchmark (`oomtrace-bench`)
//! measures the collectors under it; correctness tests check every kill of
//! it against the kernel's own counters and log.
//!
//! Two shapes of victim ([`Shape`]): an allocator that is itself the process
//! the storm starts, and a shell pipeline whose `tail` the OOM killer takes,
//! as in production, where the victim is rarely the process anyone started.

use std::{
    os::unix::process::ExitStatusExt,
    process::{Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    cgroup::MemCgroup,
    collector::Env,
    kmsg::{KilledProcess, Kmsg},
    scenarios::Workload,
};

/// How long one victim may take to be OOM-killed before the storm gives up
/// on it: with a limit of a few MiB it takes milliseconds, so this only
/// trips when something is broken (a limit that is not enforced, say).
const KILL_DEADLINE: Duration = Duration::from_secs(60);
/// How often a waiting thread looks at its process. Short, so that the
/// next one of the cgroup starts soon after the previous one is gone.
const POLL: Duration = Duration::from_millis(2);
/// How often the kernel log is read while a storm runs.
const KMSG_POLL: Duration = Duration::from_millis(50);

/// The pipeline of [`Shape::Pipeline`]: `tail` keeps every line it reads
/// until its input ends, and a stream of zeros has no newline, so it holds
/// all it reads until the OOM killer takes it; `head` then dies of SIGPIPE.
pub const PIPELINE: &str = "head -c 200000000 /dev/zero | tail";

/// What each process of a storm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `oomtrace-workload alloc`, which moves itself into the cgroup and
    /// allocates until it is killed: the process the storm starts is the
    /// victim, so its pid is known in advance.
    Allocator,
    /// `sh -c 'head -c 200000000 /dev/zero | tail'` ([`PIPELINE`]), started
    /// inside the cgroup (`oomtrace-workload exec-in`), so that the shell
    /// and both its children are in it from the start, and as a user of the
    /// storm's own ([`pipeline_uid`]), as a container's non-root user: the
    /// kernel's `Killed process` lines carry the uid, which tells the
    /// storm's victims from any other `tail` killed on the machine at the
    /// same time, exactly. The OOM killer takes
    /// `tail`, the one holding the memory, and the shell exits with 128 + 9
    /// = 137, as a container's entrypoint script would. The victim's pid is
    /// not known in advance: the kernel's `Killed process` lines say which
    /// it was. This is the shape where victims are slow to go: measured
    /// here (Linux 6.18), most tails are still there for the OOM reaper 2 s
    /// after their kill (OOM_REAPER_DELAY; `oom_reaper: reaped process`),
    /// and about one in ten has not even reached its exit by then. Now and
    /// then (about one pipeline in 200) the kernel, finding the reaped tail
    /// still not gone and the cgroup still at its limit, kills a second
    /// process of the same pipeline: `head`, or the shell itself, which
    /// then dies of SIGKILL.
    Pipeline,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Allocator => "allocator",
            Shape::Pipeline => "pipeline",
        }
    }

    /// The limit each of the storm's cgroups gets: room for the processes'
    /// own code and stacks (the workload's few MiB; a shell, `head` and
    /// `tail`), small enough that each kill takes milliseconds.
    pub fn limit(self) -> u64 {
        match self {
            Shape::Allocator => 16 << 20,
            Shape::Pipeline => 24 << 20,
        }
    }

    /// The comms the kernel may log for a victim: the process holding the
    /// memory first (see [`Shape::Pipeline`] for the others).
    pub fn victim_comms(self) -> &'static [&'static [u8]] {
        match self {
            // TASK_COMM_LEN cuts "oomtrace-workload" to 15 bytes.
            Shape::Allocator => &[b"oomtrace-worklo"],
            Shape::Pipeline => &[b"tail", b"head", b"sh"],
        }
    }

    /// Whether `status`, the wait status of the process the storm started,
    /// says that the OOM killer took a victim of it: the allocator itself
    /// died of SIGKILL; the pipeline's shell exited with 137, its last
    /// command's death by SIGKILL, or was killed itself (SIGKILL).
    pub fn oom_killed(self, status: ExitStatus) -> bool {
        let sigkilled = status.signal() == Some(libc::SIGKILL);
        match self {
            Shape::Allocator => sigkilled,
            Shape::Pipeline => sigkilled || status.code() == Some(128 + libc::SIGKILL),
        }
    }
}

/// The uid [`Shape::Pipeline`] runs as: one of this test process's own, far
/// above any account's (uids are 32-bit; pids stay under 2^22).
pub fn pipeline_uid() -> u32 {
    3_000_000_000 + std::process::id()
}

/// One process the storm started (the allocator, or the pipeline's shell),
/// and how it ended.
#[derive(Clone, Debug)]
pub struct StormProcess {
    pub shape: Shape,
    /// Its pid on the host.
    pub pid: u32,
    /// Its cgroup's path inside the hierarchy, as /proc/PID/cgroup (and
    /// oomtrace's `victim.cgroup.path`) shows it.
    pub cgroup: String,
    /// Its wait status.
    pub status: ExitStatus,
}

impl StormProcess {
    /// See [`Shape::oom_killed`].
    pub fn oom_killed(&self) -> bool {
        self.shape.oom_killed(self.status)
    }
}

/// What one run of a storm did.
pub struct Ran {
    pub shape: Shape,
    /// Every process started, in the order they ended.
    pub processes: Vec<StormProcess>,
    /// The kernel's `Killed process` lines about the storm's victims, read
    /// while it ran: for the allocator, the lines about its processes; for
    /// the pipeline, the lines about its uid ([`pipeline_uid`]). Compare
    /// their number with the cgroups' counters before relying on them (the
    /// log is a ring: see [`Ran::kmsg_overruns`]).
    pub kernel_lines: Vec<KilledProcess>,
    /// Whether the kernel log was overwritten before it was read (then
    /// lines may be missing).
    pub kmsg_overruns: u32,
    /// From the first process's start to the last one's end.
    pub elapsed: Duration,
    /// When the last process was reaped.
    pub ended: Instant,
}

impl Ran {
    /// How many processes ended as the OOM kill makes them end.
    pub fn oom_killed(&self) -> usize {
        self.processes.iter().filter(|p| p.oom_killed()).count()
    }

    pub fn process(&self, pid: u32) -> Option<&StormProcess> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// The kernel's `Killed process` line about `pid`, if it was one of the
    /// storm's victims.
    pub fn kernel_line(&self, pid: u32) -> Option<&KilledProcess> {
        self.kernel_lines.iter().find(|k| k.pid == pid)
    }

    /// Whether the OOM killer took `pid` in this storm: for the allocator,
    /// whether the storm started it; for the pipeline, whether the kernel
    /// logged it as one of the storm's tails.
    pub fn is_victim(&self, pid: u32) -> bool {
        match self.shape {
            Shape::Allocator => self.process(pid).is_some(),
            Shape::Pipeline => self.kernel_line(pid).is_some(),
        }
    }
}

/// What a storm did. The cgroups stay alive (so their kill counters can be
/// read) until this is dropped, which removes them.
pub struct StormOutcome {
    pub cgroups: Vec<MemCgroup>,
    pub ran: Ran,
}

impl StormOutcome {
    /// The kernel's own count: the sum of the cgroups' `oom_kill` counters.
    pub fn kernel_kills(&self) -> u64 {
        kernel_kills(&self.cgroups)
    }

    pub fn cgroup(&self, path: &str) -> Option<&MemCgroup> {
        self.cgroups.iter().find(|c| c.path == path)
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
    /// `kills_per_cgroup` processes of `shape` one after another, each until
    /// the OOM killer has taken its victim. Returns once every process has
    /// been waited for.
    ///
    /// Sequential within a cgroup, so that the cgroup holds nothing else
    /// than one allocator, or one pipeline, at a time.
    pub fn run(&self, env: &Env, shape: Shape, kills_per_cgroup: usize) -> Ran {
        assert!(kills_per_cgroup > 0, "an empty storm");
        let processes = Mutex::new(Vec::with_capacity(self.cgroups.len() * kills_per_cgroup));
        let mut kmsg = Kmsg::open();
        let started = Instant::now();
        // Scoped threads: a panic in one (a victim that is never killed)
        // reaches the caller; dropping the Storm then removes the cgroups
        // along with whatever is left in them.
        let ended = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .cgroups
                .iter()
                .map(|group| {
                    let processes = &processes;
                    scope.spawn(move || {
                        for _ in 0..kills_per_cgroup {
                            let process = run_until_killed(env, group, shape);
                            processes.lock().expect("processes lock").push(process);
                        }
                        Instant::now()
                    })
                })
                .collect();
            // The kernel log is a ring that a long storm's OOM reports
            // overrun: read it as the storm goes.
            while !workers.iter().all(|w| w.is_finished()) {
                kmsg.poll();
                std::thread::sleep(KMSG_POLL);
            }
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .max()
                .expect("a storm has cgroups")
        });
        // Each line is logged before its victim dies, so all are there now.
        kmsg.poll();
        let processes = processes.into_inner().expect("processes lock");
        let kernel_lines = kmsg
            .seen()
            .iter()
            .filter(|k| match shape {
                Shape::Allocator => processes.iter().any(|p| p.pid == k.pid),
                Shape::Pipeline => k.uid == pipeline_uid(),
            })
            .cloned()
            .collect();
        Ran {
            shape,
            processes,
            kernel_lines,
            kmsg_overruns: kmsg.overruns(),
            elapsed: ended - started,
            ended,
        }
    }

    /// Runs the storm (see [`Storm::run`]) and hands over the cgroups with
    /// its outcome.
    pub fn run_to_end(self, env: &Env, shape: Shape, kills_per_cgroup: usize) -> StormOutcome {
        let ran = self.run(env, shape, kills_per_cgroup);
        StormOutcome {
            cgroups: self.cgroups,
            ran,
        }
    }
}

/// Creates `cgroups` cgroups with the shape's limit and runs the storm: see
/// [`Storm::run`].
pub fn storm(env: &Env, shape: Shape, cgroups: usize, kills_per_cgroup: usize) -> StormOutcome {
    Storm::create(cgroups, shape.limit()).run_to_end(env, shape, kills_per_cgroup)
}

fn kernel_kills(cgroups: &[MemCgroup]) -> u64 {
    cgroups.iter().map(MemCgroup::oom_kills).sum()
}

/// Starts one process of `shape` in `group` and waits for it to end.
fn run_until_killed(env: &Env, group: &MemCgroup, shape: Shape) -> StormProcess {
    let mut workload = match shape {
        Shape::Allocator => Workload::spawn(env, "alloc", &["--cgroup", group.dir_str()]),
        Shape::Pipeline => {
            let uid = pipeline_uid().to_string();
            let child = Command::new(&env.workload)
                .args(["exec-in", "--uid", &uid, group.dir_str()])
                .args(["sh", "-c", PIPELINE])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // The shell reports its job's death ("Killed") on stderr.
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn the pipeline: {e}"));
            // Dropped on a panic: kills the shell; the cgroup's removal
            // takes the rest.
            Workload { child }
        }
    };
    let deadline = Instant::now() + KILL_DEADLINE;
    let status = loop {
        match workload.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            // Workload's Drop kills and reaps it.
            Ok(None) => panic!(
                "{} {} in {} was not OOM-killed within {KILL_DEADLINE:?} \
                 (limit not enforced?)",
                shape.name(),
                workload.pid(),
                group.path
            ),
            Err(e) => panic!("waiting for {} {}: {e}", shape.name(), workload.pid()),
        }
    };
    StormProcess {
        shape,
        pid: workload.pid(),
        cgroup: group.path.clone(),
        status,
    }
}
