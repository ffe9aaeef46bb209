//! SIGKILLs that are not the kernel OOM killer's kill of its victim: real
//! senders (a shell's `kill`, a process group kill, the OOM killer's own
//! extra kills of processes sharing the victim's memory), checked against
//! the wait status, the kernel's counters and dmesg.

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{LIMIT, assert_exit_137, assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A shell that runs `script` and then waits for its stdin to close, so
/// that it is still there when the collector looks at it (as an operator's
/// shell is).
pub struct Shell {
    child: Child,
}

impl Shell {
    pub fn run(script: &str) -> Self {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{script}\nread _ || true"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh: {e}"));
        Self { child }
    }

    /// Runs `script` in a shell that exits when done; returns its pid.
    pub fn once(script: &str) -> u32 {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh: {e}"));
        let pid = child.id();
        assert!(child.wait().expect("wait sh").success(), "sh -c {script:?}");
        pid
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // EOF on its stdin ends its `read`.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The memory cgroup path of this test process, as the kernel names it.
fn own_memory_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let line = |v1: bool| {
        text.lines().find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let wanted = if v1 {
                controllers.split(',').any(|c| c == "memory")
            } else {
                id == "0" && controllers.is_empty()
            };
            wanted.then(|| path.to_string())
        })
    };
    line(true).or_else(|| line(false)).expect("a memory cgroup")
}

/// What every signal kill by `sender` of a process in `cg` carries.
fn assert_signal_kill(record: &Value, target: u32, sender: u32, cg: &MemCgroup) {
    assert_eq!(record["target"]["pid"], target, "{record}");
    assert_eq!(record["target"]["comm"], "oomtrace-worklo", "{record}");
    assert_eq!(
        record["target"]["cgroup"]["path"],
        cg.path.as_str(),
        "{record}"
    );
    assert_eq!(record["target"]["cgroup"]["id"], cg.id(), "{record}");
    assert_eq!(record["target"]["container_init"], false, "{record}");
    assert!(record["target"]["rss"]["anon_bytes"].is_u64(), "{record}");
    assert_eq!(record["sender"]["pid"], sender, "{record}");
    assert_eq!(record["sender"]["tid"], sender, "{record}");
    assert_eq!(record["sender"]["comm"], "sh", "{record}");
    assert_eq!(record["sender"]["uid"], 0, "{record}");
    assert_eq!(record["sender"]["kind"], "other", "{record}");
    assert_eq!(
        record["sender"]["code"], "user",
        "kill(2): SI_USER: {record}"
    );
    assert!(record["part_of_oom_kill"].is_null(), "{record}");
    let memcg = &record["memcg"];
    assert_eq!(memcg["path"], cg.path.as_str(), "{record}");
    let usage = memcg["usage_bytes"].as_u64().expect("usage");
    assert!(usage > 0 && usage <= cg.peak(), "usage {usage}: {record}");
    assert_exit_137(record);
}

/// `kill -9` from a shell: one `signal_kill`, naming that shell (its pid,
/// name, uid and cgroup), the target as at the send, and the exit 137.
/// Not an OOM kill: the kernel counted none, and there is no `oom_kill`.
pub fn kill_9_from_a_shell_names_the_shell(env: &Env) {
    let cg = MemCgroup::create("kill9", None);
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let mut target = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str()]);
    let pid = target.said("idle");
    let shell = Shell::run(&format!("kill -9 {pid}"));
    assert_sigkilled(target.wait(), "the target");
    let record = collector.signal_kill_of(pid, TIMEOUT);
    assert_signal_kill(&record, pid, shell.pid(), &cg);
    assert_eq!(
        record["sender"]["cgroup"]["path"],
        own_memory_cgroup().as_str(),
        "the shell is in this test's cgroup: {record}"
    );
    assert!(record["after_sigterm"].is_null(), "{record}");
    assert_eq!(record["container_survives"], Value::Null, "{record}");
    drop(shell);
    assert!(collector.stop_with(libc::SIGTERM).success());
    assert_eq!(cg.oom_kills(), 0, "no OOM kill");
    assert!(collector.kills_of(pid).is_empty(), "no oom_kill record");
    let ours = collector
        .of_type("signal_kill")
        .filter(|r| r["target"]["pid"] == pid)
        .count();
    assert_eq!(ours, 1, "one record");
}

/// SIGTERM from one process (ignored by the target), SIGKILL from another:
/// the record names the SIGKILL's sender and, as `after_sigterm`, the
/// SIGTERM's. SIGTERM alone (which kills), and signals that do nothing or
/// kill by their default action, make no record; `kill -9 -PGID` on a
/// process group of three makes three.
pub fn sigkill_after_sigterm_and_group_kills(env: &Env) {
    let cg = MemCgroup::create("sigterm", None);
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);

    let mut stubborn = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str(), "--ignore-term"]);
    let stubborn_pid = stubborn.said("idle");
    let terminator = Shell::once(&format!("kill -TERM {stubborn_pid}"));
    let killer = Shell::run(&format!("sleep 0.3; kill -9 {stubborn_pid}"));
    assert_sigkilled(stubborn.wait(), "the target that ignored SIGTERM");
    let record = collector.signal_kill_of(stubborn_pid, TIMEOUT);
    assert_signal_kill(&record, stubborn_pid, killer.pid(), &cg);
    let sigterm = &record["after_sigterm"];
    assert_eq!(sigterm["sender_pid"], terminator, "{record}");
    assert_eq!(sigterm["sender_comm"], "sh", "{record}");
    let ms = sigterm["ms_before"].as_f64().expect("ms_before");
    assert!((250.0..60_000.0).contains(&ms), "{ms} ms: {record}");

    // Signals that are not SIGKILL: no record, whatever they do.
    let mut termed = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str()]);
    let termed_pid = termed.said("idle");
    let mut poked = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str()]);
    let poked_pid = poked.said("idle");
    Shell::once(&format!(
        "kill -TERM {termed_pid}; kill -CONT {poked_pid}; kill -WINCH {poked_pid}; \
         kill -USR1 {poked_pid}"
    ));
    assert_eq!(termed.wait().signal(), Some(libc::SIGTERM));
    assert_eq!(poked.wait().signal(), Some(libc::SIGUSR1));

    // A process group of three, killed at once.
    let group = process_group(env, &cg, 3);
    let pgid = group[0].1;
    let group_killer = Shell::run(&format!("kill -9 -{pgid}"));
    for (mut member, pid) in group {
        assert_sigkilled(member.wait(), "a group member");
        let record = collector.signal_kill_of(pid, TIMEOUT);
        assert_signal_kill(&record, pid, group_killer.pid(), &cg);
    }
    drop((killer, group_killer));
    assert!(collector.stop_with(libc::SIGTERM).success());
    for pid in [termed_pid, poked_pid] {
        let any = collector
            .records
            .iter()
            .any(|r| r["target"]["pid"] == pid || r["victim"]["pid"] == pid);
        assert!(!any, "no record for {pid}, which got no SIGKILL");
    }
    assert_eq!(
        collector
            .of_type("signal_kill")
            .filter(|r| {
                let pid = &r["target"]["pid"];
                r["target"]["cgroup"]["path"] == cg.path.as_str() && !pid.is_null()
            })
            .count(),
        4,
        "the stubborn one and the group of three"
    );
}

/// `idle` workloads in one new process group; returns each with its pid.
fn process_group(env: &Env, cg: &MemCgroup, n: usize) -> Vec<(Workload, u32)> {
    let mut members = Vec::new();
    let mut pgid = 0;
    for _ in 0..n {
        let child = Command::new(&env.workload)
            .args(["idle", "--cgroup", cg.dir_str()])
            .process_group(pgid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a group member");
        let mut member = Workload { child };
        let pid = member.said("idle");
        if pgid == 0 {
            pgid = pid as i32;
        }
        members.push((member, pid));
    }
    members
}

/// A multi-threaded target, sent SIGKILL through one of its non-leader
/// threads' ids (`kill TID` reaches the whole process): one record, for the
/// process, naming that thread.
pub fn multi_threaded_target_is_one_record(env: &Env) {
    let cg = MemCgroup::create("sigthreads", None);
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let mut target = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str(), "--threads", "4"]);
    let pid = target.said("idle");
    let tid = target.said("thread");
    assert_ne!(pid, tid);
    let shell = Shell::run(&format!("kill -9 {tid}"));
    assert_sigkilled(target.wait(), "the threaded target");
    let record = collector.signal_kill_of(pid, TIMEOUT);
    assert_signal_kill(&record, pid, shell.pid(), &cg);
    assert_eq!(
        record["target"]["tid"], tid,
        "the thread signalled: {record}"
    );
    drop(shell);
    assert!(collector.stop_with(libc::SIGTERM).success());
    let ours = collector
        .of_type("signal_kill")
        .filter(|r| r["target"]["pid"] == pid)
        .count();
    assert_eq!(ours, 1, "one record per thread group, not per thread");
}

/// The OOM killer kills its victim, then every other process sharing the
/// victim's memory (clone(CLONE_VM) without CLONE_THREAD). The victim is an
/// `oom_kill` (`oom.killed`: its SIGKILL was seen), the other a
/// `signal_kill` from the kernel naming that kill's `seq`; neither is
/// reported twice, and the kernel counted one OOM kill.
pub fn shared_mm_kills_belong_to_the_oom_kill(env: &Env) {
    let cg = MemCgroup::create("sharedmm", Some(LIMIT));
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let mut kmsg = Kmsg::open();
    let mut workload = Workload::spawn(env, "shared-mm", &["--cgroup", cg.dir_str()]);
    let sharer = workload.said("sharer");
    let parent = workload.pid();
    assert_sigkilled(workload.wait(), "the allocating process");
    let kill = collector.kill_matching(
        |r| r["victim"]["pid"] == parent || r["victim"]["pid"] == sharer,
        TIMEOUT,
    );
    let victim = kill["victim"]["pid"].as_u64().expect("pid") as u32;
    let other = if victim == parent { sharer } else { parent };
    let kernel = kmsg.killed(victim, TIMEOUT);
    assert_matches_kernel(&kill, &kernel);
    assert_exit_137(&kill);
    assert_eq!(kill["oom"]["killed"], true, "{kill}");
    let extra = collector.signal_kill_of(other, TIMEOUT);
    assert_eq!(extra["part_of_oom_kill"], kill["seq"], "{extra}");
    assert_eq!(extra["sender"]["kind"], "kernel", "{extra}");
    assert_eq!(extra["sender"]["code"], "kernel", "{extra}");
    assert_eq!(extra["sender"]["pid"], kill["trigger"]["pid"], "{extra}");
    assert_eq!(
        extra["target"]["cgroup"]["path"],
        cg.path.as_str(),
        "{extra}"
    );
    assert_exit_137(&extra);
    assert!(collector.stop_with(libc::SIGTERM).success());
    assert_eq!(cg.oom_kills(), 1, "the kernel counts the victim only");
    let about = |pid: u32| {
        collector
            .records
            .iter()
            .filter(|r| r["victim"]["pid"] == pid || r["target"]["pid"] == pid)
            .count()
    };
    assert_eq!((about(victim), about(other)), (1, 1), "one record each");
}

/// A task that got `kill -9` but cannot die yet (frozen by the cgroup v1
/// freezer) is then chosen by the OOM killer, which marks it without a kill
/// of its own (task_will_free_mem()): the `oom_kill` record says
/// `oom.killed: false` and names the `signal_kill` that is killing it; the
/// kernel logs no kill of it. Being marked lets it out of the freezer
/// (freezing_slow_path() spares OOM victims), so it dies at once, of the
/// `kill -9`. cgroup v1 only (v2's freezer lets SIGKILL through).
pub fn marked_while_dying_is_not_an_oom_kill(env: &Env) {
    let cg = MemCgroup::create("dying", Some(LIMIT));
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let mut kmsg = Kmsg::open();
    let mut dying = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", cg.dir_str(), "--hold-mib", "40"],
    );
    assert_eq!(dying.said("held"), 40);
    let pid = dying.pid();
    // Declared after `dying`, so dropped before it: thawed before any wait.
    let freezer = Freezer::create();
    freezer.hold(pid);
    let sender = Shell::once(&format!("kill -9 {pid}"));
    // Another allocator runs the cgroup out of memory: the frozen task is
    // the biggest, and already dying.
    let mut allocator = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    let marked = collector.kill_of(pid, TIMEOUT);
    let signal_kill = collector.signal_kill_of(pid, TIMEOUT);
    assert_eq!(signal_kill["sender"]["pid"], sender, "{signal_kill}");
    assert_eq!(marked["oom"]["killed"], false, "{marked}");
    assert_eq!(
        marked["oom"]["signal_kill_seq"], signal_kill["seq"],
        "{marked}"
    );
    assert_eq!(marked["oom"]["kernel_log"], "missing", "{marked}");
    assert_sigkilled(dying.wait(), "the frozen task, marked");
    assert_exit_137(&signal_kill);
    assert_exit_137(&marked);
    let (sent, marked_at) = (signal_kill["boot_ns"].as_u64(), marked["boot_ns"].as_u64());
    assert!(
        sent < marked_at,
        "the kill -9 came first: {signal_kill} {marked}"
    );
    assert_sigkilled(allocator.wait(), "the allocator");
    let allocator_kill = collector.kill_of(allocator.pid(), TIMEOUT);
    assert_eq!(allocator_kill["oom"]["killed"], true, "{allocator_kill}");
    kmsg.killed(allocator.pid(), TIMEOUT);
    freezer.thaw();
    assert!(collector.stop_with(libc::SIGTERM).success());
    kmsg.poll();
    assert!(
        kmsg.seen().iter().all(|k| k.pid != pid),
        "the kernel logged no kill of the frozen task"
    );
}

/// A cgroup v1 freezer cgroup of this test's own.
struct Freezer {
    dir: std::path::PathBuf,
}

impl Freezer {
    fn create() -> Self {
        let dir = std::path::Path::new("/sys/fs/cgroup/freezer")
            .join(format!("oomtrace-test-freezer-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self { dir }
    }

    /// Moves `pid` in and freezes it.
    fn hold(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
        std::fs::write(self.dir.join("freezer.state"), "FROZEN").expect("freeze");
        for _ in 0..500 {
            let state = std::fs::read_to_string(self.dir.join("freezer.state")).expect("state");
            if state.trim() == "FROZEN" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the freezer did not freeze");
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        // Whatever is left goes back to the root freezer cgroup.
        let root = self
            .dir
            .parent()
            .expect("freezer root")
            .join("cgroup.procs");
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(&root, pid);
        }
        for _ in 0..500 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A sender whose task name is a userspace OOM killer's (`systemd-oomd`:
/// a copy of the shell under that name, as the kernel only knows a task
/// by its name) is named `userspace_oom_killer`; the mark systemd-oomd
/// leaves on a cgroup it acts on (`user.oomd_ooms`) confirms it
/// (`kind_from: cgroup_xattr`). The mark alone decides nothing: a plain
/// shell's `kill -9` in the marked cgroup stays `other`.
pub fn userspace_oom_killer_is_named_and_confirmed(env: &Env) {
    let marked = MemCgroup::create("oomd-marked", None);
    let plain = MemCgroup::create("oomd-plain", None);
    set_xattr(marked.dir_str(), "user.oomd_ooms", b"1");
    let oomd = OomdLookalike::create();
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let mut in_marked = Workload::spawn(env, "idle", &["--cgroup", marked.dir_str()]);
    let mut in_plain = Workload::spawn(env, "idle", &["--cgroup", plain.dir_str()]);
    let mut by_shell = Workload::spawn(env, "idle", &["--cgroup", marked.dir_str()]);
    let (a, b, c) = (
        in_marked.said("idle"),
        in_plain.said("idle"),
        by_shell.said("idle"),
    );
    let killer = oomd.run(&format!("kill -9 {a} {b}"));
    let shell = Shell::run(&format!("kill -9 {c}"));
    for workload in [&mut in_marked, &mut in_plain, &mut by_shell] {
        assert_sigkilled(workload.wait(), "a target");
    }
    let confirmed = collector.signal_kill_of(a, TIMEOUT);
    assert_eq!(confirmed["sender"]["pid"], killer.pid(), "{confirmed}");
    assert_eq!(confirmed["sender"]["comm"], "systemd-oomd", "{confirmed}");
    assert_eq!(
        confirmed["sender"]["kind"], "userspace_oom_killer",
        "{confirmed}"
    );
    assert_eq!(
        confirmed["sender"]["kind_from"], "cgroup_xattr",
        "{confirmed}"
    );
    let by_name = collector.signal_kill_of(b, TIMEOUT);
    assert_eq!(
        by_name["sender"]["kind"], "userspace_oom_killer",
        "{by_name}"
    );
    assert_eq!(by_name["sender"]["kind_from"], "comm", "{by_name}");
    let stale = collector.signal_kill_of(c, TIMEOUT);
    assert_eq!(stale["sender"]["pid"], shell.pid(), "{stale}");
    assert_eq!(stale["sender"]["kind"], "other", "{stale}");
    assert!(stale["sender"]["kind_from"].is_null(), "{stale}");
    for record in [&confirmed, &by_name, &stale] {
        assert_exit_137(record);
    }
}

fn set_xattr(dir: &str, name: &str, value: &[u8]) {
    let path = std::ffi::CString::new(dir).expect("path");
    let name = std::ffi::CString::new(name).expect("name");
    // SAFETY: NUL-terminated strings and a value of `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {dir}: {}", std::io::Error::last_os_error());
}

/// A copy of /bin/sh named `systemd-oomd`, in a directory of its own.
struct OomdLookalike {
    dir: std::path::PathBuf,
}

impl OomdLookalike {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("oomtrace-test-oomd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::copy("/bin/sh", dir.join("systemd-oomd")).expect("copy /bin/sh");
        Self { dir }
    }

    /// Runs `script` under that name; it stays until dropped.
    fn run(&self, script: &str) -> Shell {
        let child = Command::new(self.dir.join("systemd-oomd"))
            .arg("-c")
            .arg(format!("{script}\nread _ || true"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn systemd-oomd lookalike");
        Shell { child }
    }
}

impl Drop for OomdLookalike {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--signal-kills off`: the hook is not attached (the `start` record says
/// so), no `signal_kill` is written, and whether the OOM killer itself
/// killed a victim is unknown: `oom.killed` is null, never a guess.
pub fn signal_kills_off_leaves_nulls(env: &Env) {
    let cg = MemCgroup::create("sigoff", Some(LIMIT));
    let mut collector = Collector::start(env, &["--signal-kills", "off", "--exit-wait", "2s"]);
    let hook = collector.start_record()["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "signal_generate"))
        .cloned()
        .expect("signal_generate in the start record");
    assert!(hook["mode"].is_null(), "not attached: {hook}");
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kill = collector.kill_of(victim.pid(), TIMEOUT);
    assert!(kill["oom"]["killed"].is_null(), "{kill}");
    let mut target = Workload::spawn(env, "idle", &["--cgroup", cg.dir_str()]);
    let pid = target.said("idle");
    Shell::once(&format!("kill -9 {pid}"));
    assert_sigkilled(target.wait(), "the target");
    assert!(collector.stop_with(libc::SIGTERM).success());
    assert_eq!(
        collector.of_type("signal_kill").count(),
        0,
        "no signal_kill"
    );
    assert_eq!(collector.stop_record()["counters"]["signal_kills"], 0);
}

/// A burst of SIGKILLs cannot crowd OOM kills out of the ring buffer:
/// signal kills stop at three quarters of it. With the collector stopped
/// (SIGSTOP) on a one-page ring, a process group of twelve is killed at
/// once, then an allocator is OOM-killed: the OOM kill is written, and
/// every signal kill is either written or counted (`lost.signal_kills`).
pub fn sigkill_burst_leaves_room_for_oom_kills(env: &Env) {
    const GROUP: usize = 12;
    let cg = MemCgroup::create("burst", Some(LIMIT));
    let mut collector = Collector::start(
        env,
        &["--ring-buffer-bytes", "4096", "--exit-wait", "500ms"],
    );
    let group = process_group(env, &cg, GROUP);
    let pgid = group[0].1;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGSTOP) };
    Shell::once(&format!("kill -9 -{pgid}"));
    let mut pids = Vec::new();
    for (mut member, pid) in group {
        assert_sigkilled(member.wait(), "a group member");
        pids.push(pid);
    }
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGCONT) };
    let kill = collector.kill_of(victim.pid(), TIMEOUT);
    assert_eq!(kill["oom"]["killed"], true, "{kill}");
    assert!(collector.stop_with(libc::SIGTERM).success());
    let written = collector
        .of_type("signal_kill")
        .filter(|r| pids.contains(&(r["target"]["pid"].as_u64().unwrap_or(0) as u32)))
        .count() as u64;
    let lost: u64 = collector
        .of_type("lost")
        .map(|r| r["signal_kills"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        lost > 0,
        "twelve cannot fit in a page: {:?}",
        collector.records
    );
    // Other SIGKILLs on the node may have been counted too, never fewer.
    assert!(
        written + lost >= GROUP as u64,
        "{written} written, {lost} lost"
    );
    assert_eq!(
        collector.stop_record()["counters"]["lost_signal_kills"],
        lost,
        "{:?}",
        collector.stop_record()
    );
    assert_eq!(collector.stop_record()["counters"]["lost_kills"], 0);
}
