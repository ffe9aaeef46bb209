//! The end-to-end scenarios, defined once. `tests/e2e.rs` runs each as a
//! cargo test on the host; the VM matrix runs the same functions inside
//! other kernels. Each causes real OOM kills in cgroups it creates and checks
//! the record field by field against what the kernel itself reports: the
//! `Killed process` line, the cgroup's oom_kill counter, and the wait status.
//! A scenario panics, with context, on the first mismatch.

use std::{os::unix::process::ExitStatusExt, process::ExitStatus, time::Duration};

use serde_json::Value;

pub use crate::workload::Workload;
use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::{KilledProcess, Kmsg},
};

/// Enough for the workload's own few MiB, small enough to OOM in a blink.
pub const LIMIT: u64 = 64 << 20;
pub const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asserts that the wait status is death by SIGKILL (the shell's 137).
pub fn assert_sigkilled(status: ExitStatus, what: &str) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what} should have died of SIGKILL (exit 137), got {status:?}"
    );
}

/// Asserts every field the kernel's `Killed process` line also has.
pub fn assert_matches_kernel(record: &Value, kernel: &KilledProcess) {
    assert_eq!(record["victim"]["pid"], kernel.pid, "pid: {record}");
    assert_kernel_figures(record, kernel);
}

/// Asserts every field of the kernel's `Killed process` line but its pid,
/// which is the victim thread's id (task_pid_nr()): the process's pid,
/// except where the kernel had to pick another thread than the leader.
pub fn assert_kernel_figures(record: &Value, kernel: &KilledProcess) {
    let v = &record["victim"];
    let kb = |n: u64| Value::from(n * 1024);
    assert_eq!(
        v["oom_score_adj"], kernel.oom_score_adj,
        "oom_score_adj: {record}"
    );
    assert_eq!(v["uid"], kernel.uid, "uid: {record}");
    assert_eq!(
        v["total_vm_bytes"],
        kb(kernel.total_vm_kb),
        "total_vm: {record}"
    );
    assert_eq!(
        v["rss"]["anon_bytes"],
        kb(kernel.anon_rss_kb),
        "anon-rss: {record}"
    );
    assert_eq!(
        v["rss"]["file_bytes"],
        kb(kernel.file_rss_kb),
        "file-rss: {record}"
    );
    assert_eq!(
        v["rss"]["shmem_bytes"],
        kb(kernel.shmem_rss_kb),
        "shmem-rss: {record}"
    );
    assert_eq!(
        v["pgtables_bytes"],
        kb(kernel.pgtables_kb),
        "pgtables: {record}"
    );
    assert_eq!(comm_bytes(v), kernel.comm, "comm: {record}");
}

/// The exact comm bytes a record carries: `comm_hex` if set, else `comm`.
pub fn comm_bytes(who: &Value) -> Vec<u8> {
    match who["comm_hex"].as_str() {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect(),
        None => who["comm"].as_str().expect("comm").as_bytes().to_vec(),
    }
}

pub fn assert_exit_137(record: &Value) {
    let exit = &record["exit"];
    assert_eq!(exit["observed"], true, "exit not observed: {record}");
    assert_eq!(exit["code"], 137, "exit code: {record}");
    assert_eq!(exit["signal"], 9, "exit signal: {record}");
    assert!(
        exit["delay_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{record}"
    );
}

/// Every record names where and when it was made: `hostname` as the kernel
/// has it, `boot_id` the kernel's id of this boot, and one `run_id` (the
/// `start` record's, not empty) for every record of the run.
pub fn assert_identity(records: &[Value]) {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {path}: {e}"))
            .trim()
            .to_string()
    };
    let hostname = read("/proc/sys/kernel/hostname");
    let boot_id = read("/proc/sys/kernel/random/boot_id");
    let start = records.first().expect("records");
    assert_eq!(start["type"], "start", "{start}");
    let run_id = start["run_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no run_id in the start record: {start}"));
    for record in records {
        assert_eq!(record["hostname"], hostname.as_str(), "hostname: {record}");
        assert_eq!(record["boot_id"], boot_id.as_str(), "boot_id: {record}");
        assert_eq!(record["run_id"], run_id, "run_id: {record}");
    }
}

/// The victim's cgroup: the path the test created, and the id is its
/// directory's inode. Where the kernel logged its `oom-kill:` line (it
/// ratelimits that one to 10 per 5 s), the path is also its `task_memcg`.
pub fn assert_cgroup(record: &Value, cg: &MemCgroup, kernel: &KilledProcess) {
    let c = &record["victim"]["cgroup"];
    assert_eq!(c["path"], cg.path.as_str(), "cgroup path: {record}");
    assert_eq!(
        c["id"],
        cg.id(),
        "cgroup id (inode of {}): {record}",
        cg.dir.display()
    );
    if let Some(logged) = kernel
        .context
        .as_ref()
        .and_then(|c| c.task_memcg.as_deref())
    {
        assert_eq!(c["path"], logged, "the kernel's task_memcg: {record}");
    }
}

/// `oom.*`: filled in exactly when `oom_kill_process` is hooked (per the
/// start record), and then equal to what the kernel logged: the memcg whose
/// limit fired, that limit in pages, and the victim's oom_badness().
pub fn assert_oom_context(
    record: &Value,
    start: &Value,
    kernel: &KilledProcess,
    limit_path: &str,
    limit_bytes: u64,
) {
    let oom = &record["oom"];
    let hooked = start["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "oom_kill_process"))
        .is_some_and(|p| !p["mode"].is_null());
    if !hooked {
        for field in ["points", "totalpages", "chosen_pid"] {
            assert!(
                oom[field].is_null(),
                "oom.{field} without oom_kill_process: {record}"
            );
        }
        if oom["kernel_log"] == "matched" {
            // From the kernel's own oom-kill: line, which the test read too.
            let context = kernel
                .context
                .as_ref()
                .expect("the kernel printed its summary");
            assert_eq!(oom["constraint"], "memcg", "{record}");
            assert_eq!(oom["memcg_path"].as_str(), context.oom_memcg.as_deref());
            assert_eq!(oom["memcg_path"], limit_path, "{record}");
            assert_eq!(oom["memcg_source"], "kernel_log", "{record}");
        } else if record["memcg"].is_null() {
            assert!(oom["memcg_path"].is_null(), "{record}");
            assert!(oom["memcg_source"].is_null(), "{record}");
        } else {
            // Derived from the memcg levels read at the kill.
            assert_eq!(oom["memcg_path"], limit_path, "{record}");
            assert_eq!(oom["memcg_source"], "usage_at_limit", "{record}");
        }
        return;
    }
    assert_eq!(oom["constraint"], "memcg", "{record}");
    assert_eq!(oom["memcg_path"], limit_path, "{record}");
    assert_eq!(oom["memcg_source"], "oom_kill_process", "{record}");
    if let Some(context) = &kernel.context {
        assert_eq!(context.constraint, "CONSTRAINT_MEMCG");
        let logged = context.oom_memcg.as_deref();
        assert_eq!(oom["memcg_path"].as_str(), logged, "the kernel's oom_memcg");
    }
    let page_size = start["host"]["page_size"].as_u64().expect("page size");
    let totalpages = limit_bytes / page_size;
    assert_eq!(
        oom["totalpages"], totalpages,
        "the limit in pages: {record}"
    );
    assert_eq!(oom["chosen_pid"], kernel.pid, "{record}");
    // oom_badness(): RSS + swap entries + page-table pages, plus
    // oom_score_adj * (totalpages / 1000). The victim was blocked in its own
    // allocation between being chosen and being marked, so the counters the
    // kernel logged at the kill are the ones it scored (no swap here).
    let rss_pages =
        (kernel.anon_rss_kb + kernel.file_rss_kb + kernel.shmem_rss_kb) * 1024 / page_size;
    let pgtables_pages = kernel.pgtables_kb * 1024 / page_size;
    let adj = i64::from(kernel.oom_score_adj) * (totalpages / 1000) as i64;
    let expected = (rss_pages + pgtables_pages) as i64 + adj;
    assert_eq!(oom["points"], expected, "oom_badness: {record}");
}

/// Kills a single-threaded allocator with oom_score_adj 500 and checks the
/// record against dmesg, the memcg counter and the wait status.
pub fn single_threaded_victim(env: &Env) {
    let cg = MemCgroup::create("single", Some(LIMIT));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--adj", "500"]);
    let status = victim.wait();
    assert_sigkilled(status, "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);

    assert_eq!(kernel.oom_score_adj, 500);
    assert_eq!(kernel.reason, "Memory cgroup out of memory");
    assert_matches_kernel(&record, &kernel);
    assert_eq!(record["victim"]["tid"], victim.pid(), "{record}");
    assert_exit_137(&record);
    assert_cgroup(&record, &cg, &kernel);
    assert_oom_context(&record, collector.start_record(), &kernel, &cg.path, LIMIT);
    assert_eq!(cg.oom_kills(), 1, "the kernel counted one kill");
    assert_eq!(
        record["trigger"]["pid"],
        victim.pid(),
        "it triggered its own OOM: {record}"
    );
    let memcg = &record["memcg"];
    assert_eq!(memcg["path"], cg.path.as_str(), "{record}");
    assert_eq!(memcg["limit_bytes"], LIMIT, "{record}");
    let usage = memcg["usage_bytes"].as_u64().expect("usage");
    assert!(
        usage > LIMIT - (4 << 20) && usage <= LIMIT,
        "usage {usage} at the kill: {record}"
    );
    assert_eq!(record["victim"]["container_init"], false, "{record}");
    assert!(collector.start_record()["probes"][0]["mode"].is_string());
}

/// A multi-threaded process where a non-leader thread allocates: one record,
/// for the process (pid = tgid).
pub fn multi_threaded_victim(env: &Env) {
    let cg = MemCgroup::create("threads", Some(LIMIT));
    let mut collector = Collector::start(env, &["--exit-wait", "1s"]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", cg.dir_str(), "--threads", "4", "--adj", "300"],
    );
    assert_sigkilled(victim.wait(), "the threaded allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_eq!(
        record["victim"]["pid"],
        victim.pid(),
        "pid is the tgid: {record}"
    );
    assert_eq!(record["victim"]["oom_score_adj"], kernel.oom_score_adj);
    assert_ne!(
        record["trigger"]["tid"],
        victim.pid(),
        "the allocating thread is not the leader: {record}"
    );
    assert_eq!(record["trigger"]["pid"], victim.pid(), "{record}");
    assert_exit_137(&record);
    assert_cgroup(&record, &cg, &kernel);
    assert_eq!(cg.oom_kills(), 1);
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let records = collector.kills_of(victim.pid());
    assert_eq!(records.len(), 1, "exactly one record: {records:?}");
}

/// The parent stays outside the cgroup, its child inside is killed: one
/// record, for the child, and the parent lives on.
pub fn child_killed_parent_survives(env: &Env) {
    let cg = MemCgroup::create("parent", Some(LIMIT));
    let mut collector = Collector::start(env, &["--exit-wait", "1s"]);
    let mut kmsg = Kmsg::open();
    let mut parent = Workload::spawn(env, "parent", &["--cgroup", cg.dir_str(), "--adj", "200"]);
    let status = parent.wait();
    assert!(status.success(), "the parent survives: {status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(parent.child.stdout.as_mut().expect("stdout"), &mut out)
        .expect("read");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"child"), "parent said {out:?}");
    let child_pid: u32 = fields[1].parse().expect("child pid");
    let raw_status: i32 = fields[2].parse().expect("status");
    assert_sigkilled(ExitStatus::from_raw(raw_status), "the child");
    let kernel = kmsg.killed(child_pid, KILL_TIMEOUT);
    let record = collector.kill_of(child_pid, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_cgroup(&record, &cg, &kernel);
    assert_eq!(cg.oom_kills(), 1);
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success());
    let kills: Vec<_> = collector.kills().collect();
    assert_eq!(kills.len(), 1, "one record, for the child only: {kills:?}");
    assert_ne!(kills[0]["victim"]["pid"], parent.pid());
}

/// A comm with a quote, a backslash, a newline and a non-UTF-8 byte: the line
/// is valid JSON and the exact name round-trips through `comm_hex`.
pub fn hostile_comm(env: &Env) {
    let name: &[u8] = b"q\"b\\n\n\xffz";
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let cg = MemCgroup::create("comm", Some(LIMIT));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", cg.dir_str(), "--comm-hex", &hex],
    );
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    // Collector::kill_of already parsed the line as one JSON object.
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_eq!(kernel.comm, name, "the kernel kept the name byte for byte");
    assert_eq!(comm_bytes(&record["victim"]), name, "{record}");
    assert_eq!(
        record["victim"]["comm"],
        String::from_utf8_lossy(name).as_ref()
    );
    assert_eq!(record["victim"]["comm_hex"], hex.as_str());
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
}

/// Two cgroups OOM at the same moment: two records, each with its own
/// cgroup and exit, never crossed.
pub fn two_cgroups_at_once(env: &Env) {
    let a = MemCgroup::create("twin-a", Some(LIMIT));
    let b = MemCgroup::create("twin-b", Some(LIMIT + (16 << 20)));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut wa = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", a.dir_str(), "--adj", "100", "--wait-stdin"],
    );
    let mut wb = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", b.dir_str(), "--adj", "200", "--wait-stdin"],
    );
    // Both are in place; start them together.
    std::thread::sleep(Duration::from_millis(200));
    wa.release();
    wb.release();
    assert_sigkilled(wa.wait(), "allocator a");
    assert_sigkilled(wb.wait(), "allocator b");
    for (w, cg, adj) in [(&wa, &a, 100), (&wb, &b, 200)] {
        let kernel = kmsg.killed(w.pid(), KILL_TIMEOUT);
        let record = collector.kill_of(w.pid(), KILL_TIMEOUT);
        assert_matches_kernel(&record, &kernel);
        assert_eq!(record["victim"]["oom_score_adj"], adj);
        assert_cgroup(&record, cg, &kernel);
        assert_exit_137(&record);
        assert_eq!(record["memcg"]["path"], cg.path.as_str());
        assert_eq!(cg.oom_kills(), 1);
    }
}

/// The cgroup is removed right after the kill: the record still names it,
/// because the path was read inside the kernel at the kill.
pub fn cgroup_removed_after_kill(env: &Env) {
    let mut cg = MemCgroup::create("removed", Some(LIMIT));
    let path = cg.path.clone();
    let id = cg.id();
    // A long exit-wait, so that the record is written after the rmdir below
    // unless the exit joins it first; either way nothing reads the path late.
    let mut collector = Collector::start(env, &["--exit-wait", "3s"]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    cg.remove();
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    if let Some(logged) = kernel
        .context
        .as_ref()
        .and_then(|c| c.task_memcg.as_deref())
    {
        assert_eq!(logged, path, "the kernel's task_memcg");
    }
    assert!(!cg.dir.exists(), "the cgroup is gone");
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_eq!(
        record["victim"]["cgroup"]["path"],
        path.as_str(),
        "{record}"
    );
    assert_eq!(record["victim"]["cgroup"]["id"], id, "{record}");
    assert_eq!(record["memcg"]["path"], path.as_str(), "{record}");
    assert_exit_137(&record);
}

/// The limit that fires is the parent's (a pod-level limit), not the
/// victim's own cgroup (a container without a limit of its own): the record
/// tells the two apart.
pub fn parent_limit_fires(env: &Env) {
    let mut pod = MemCgroup::create("pod", Some(LIMIT));
    let pod_path = pod.path.clone();
    let container = pod.child("container", None);
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", container.dir_str(), "--adj", "250"],
    );
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_cgroup(&record, container, &kernel);
    if let Some(logged) = &kernel.context {
        let fired = logged.oom_memcg.as_deref();
        assert_eq!(fired, Some(pod_path.as_str()), "the pod's limit fired");
    }
    // The victim's own memcg has no limit; its parent is at its limit.
    let memcg = &record["memcg"];
    assert_eq!(memcg["path"], container.path.as_str(), "{record}");
    assert!(
        memcg["limit_bytes"].is_null(),
        "the container has no limit: {record}"
    );
    assert_eq!(memcg["levels"][1]["path"], pod_path.as_str(), "{record}");
    assert_eq!(memcg["levels"][1]["limit_bytes"], LIMIT, "{record}");
    let pod_usage = memcg["levels"][1]["usage_bytes"].as_u64().expect("usage");
    assert!(
        pod_usage > LIMIT - (4 << 20),
        "the pod is at its limit: {record}"
    );
    assert_eq!(container.oom_kills(), 1);
    assert_oom_context(&record, collector.start_record(), &kernel, &pod_path, LIMIT);
}

// Ways a victim's exit could slip past the join. Its exit is reported for
// the last thread of the process to leave, matched to the kill by the
// victim's pid, so what can go wrong is a process whose threads and pids
// move: the leader leaving before the thread that gets killed, and an
// exec from a thread that is not the leader (de_thread() hands it the
// leader's pid). Both are caused below. The third, a victim's pid reused
// by a new process between the kill and the exit, cannot be caused on a
// shared machine: forcing a pid needs /proc/sys/kernel/ns_last_pid, which
// in the host's pid namespace would steer every process on the machine,
// so these tests never write it.

/// The process's main thread leaves on its own (the raw exit system call,
/// SYS_exit, which ends one thread, unlike exit_group) before its worker
/// thread allocates until the OOM kill. The kernel then kills the process
/// through the worker, the one thread with memory left (find_lock_task_mm()),
/// and logs the worker's tid and name; the record names the process (pid,
/// the tgid) and that thread (tid), and is joined with exit 137: the exit
/// that ends the process is the worker's, not the leader's early exit 0.
pub fn leader_exits_before_victim_thread(env: &Env) {
    let cg = MemCgroup::create("leader-exit", Some(LIMIT));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "leader-exit",
        &["--cgroup", cg.dir_str(), "--adj", "300"],
    );
    // Said once the leader is gone (a zombie), before it allocates.
    let worker = victim.said("worker");
    assert_ne!(worker, victim.pid(), "the worker is not the leader");
    assert_sigkilled(victim.wait(), "the process whose leader left first");
    let kernel = kmsg.killed(worker, KILL_TIMEOUT);
    assert_eq!(kernel.comm, b"allocator", "the kernel killed the worker");
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_eq!(record["victim"]["tid"], worker, "{record}");
    assert_kernel_figures(&record, &kernel);
    assert_exit_137(&record);
    assert_cgroup(&record, &cg, &kernel);
    assert_eq!(cg.oom_kills(), 1, "the kernel counted one kill");
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let records = collector.kills_of(victim.pid());
    assert_eq!(records.len(), 1, "exactly one record: {records:?}");
}

/// A process of three threads whose third (not the leader) execve()s the
/// allocator: the kernel's de_thread() ends the other two and gives the
/// exec'ing thread the leader's pid, so the allocator then OOM-killed has
/// the pid the process started with. One record for that pid (and tid),
/// matching the kernel's line, joined with exit 137; the threads the exec
/// ended were no victims and add nothing.
pub fn exec_from_non_leader_thread(env: &Env) {
    let cg = MemCgroup::create("exec-thread", Some(LIMIT));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "exec-from-thread",
        &["--cgroup", cg.dir_str(), "--adj", "400"],
    );
    let exec_tid = victim.said("exec from");
    assert_ne!(exec_tid, victim.pid(), "the exec comes from another thread");
    assert_sigkilled(victim.wait(), "the allocator exec'ed from a thread");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    assert_eq!(kernel.oom_score_adj, 400, "the allocator after the exec");
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_eq!(
        record["victim"]["tid"],
        victim.pid(),
        "the exec'ing thread took the leader's pid: {record}"
    );
    assert_exit_137(&record);
    assert_cgroup(&record, &cg, &kernel);
    assert_eq!(cg.oom_kills(), 1, "the kernel counted one kill");
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let records: Vec<&Value> = collector
        .kills()
        .filter(|r| r["victim"]["pid"] == victim.pid() || r["victim"]["tid"] == exec_tid)
        .collect();
    assert_eq!(records.len(), 1, "exactly one record: {records:?}");
}
