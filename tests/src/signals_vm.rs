//! A real userspace OOM killer: earlyoom (Debian's package, linked against
//! glibc; `cargo xtask vmtest` copies it and its libraries into the VMs'
//! initramfs). earlyoom watches the whole machine's available memory and
//! kills on it, so these scenarios run only inside the VMs, where the
//! machine is the test's own: never on a host, whose other processes it
//! would kill.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    scenarios::{assert_exit_137, assert_sigkilled},
    workload::Workload,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian's package, and the VMs' initramfs, have it.
pub const EARLYOOM: &str = "/usr/bin/earlyoom";

/// Why a VM-only scenario does not run elsewhere (the matrix's n/a).
pub const VM_ONLY_WHY: &str = "runs only in the VMs: earlyoom acts on the whole machine";

/// Whether this process runs inside a VM of `cargo xtask vmtest`, whose
/// /init exports OOMTRACE_VM=1.
pub fn in_vm() -> bool {
    std::env::var_os("OOMTRACE_VM").is_some_and(|v| v == "1")
}

/// earlyoom, started by this test; stopped (SIGKILL to its pid) on drop,
/// on every path.
struct Earlyoom {
    child: Child,
    log: PathBuf,
}

impl Earlyoom {
    /// Starts `earlyoom ARGS` and waits until it watches memory (it has
    /// printed its limits). Its stdout and stderr (line-buffered) go to a
    /// log file, shown when an assertion fails.
    fn start(args: &[&str]) -> Self {
        assert!(in_vm(), "{VM_ONLY_WHY}: refusing to start earlyoom here");
        let log =
            std::env::temp_dir().join(format!("oomtrace-test-earlyoom-{}.log", std::process::id()));
        let file = File::create(&log).expect("earlyoom's log");
        let child = Command::new(EARLYOOM)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("earlyoom's log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {EARLYOOM}: {e}"));
        let mut earlyoom = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !earlyoom.said().contains("SIGKILL when") {
            if let Ok(Some(status)) = earlyoom.child.try_wait() {
                panic!("earlyoom exited ({status}): {}", earlyoom.said());
            }
            assert!(
                Instant::now() < deadline,
                "earlyoom did not start within 20 s: {}",
                earlyoom.said()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        earlyoom
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Earlyoom {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A `NAME: N kB` line of /proc/meminfo, in bytes.
fn meminfo_bytes(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/meminfo"))
        * 1024
}

/// The kernel's count of OOM kills since boot (/proc/vmstat `oom_kill`).
fn kernel_oom_kills() -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").expect("/proc/vmstat");
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .expect("oom_kill in /proc/vmstat")
}

/// earlyoom, the machine's userspace OOM killer, SIGTERMs then SIGKILLs an
/// allocator that ignores SIGTERM (oom_score_adj 1000, so it is earlyoom's
/// choice), well before the kernel's OOM killer would act: SIGTERM below
/// 40% of memory available, SIGKILL below 30% (no swap in the VM; `-s
/// 100,100` ignores swap). The allocator is in a cgroup of its own without
/// a limit (only so that its memcg's usage is its own; earlyoom acts on the
/// machine's memory). One `signal_kill`: the target is the allocator, the
/// sender earlyoom (its pid, kind `userspace_oom_killer` from its name),
/// the SIGTERM before it earlyoom's (when earlyoom sent one: it sends
/// SIGKILL at once when memory fell past both limits between two looks),
/// the target's memcg holding the allocator's memory, and exit 137. The
/// kernel's OOM killer did not act: no `oom_kill`, and its counters did not
/// move.
pub fn userspace_oom_killer_is_named(env: &Env) {
    assert!(in_vm(), "{VM_ONLY_WHY}");
    let total = meminfo_bytes("MemTotal");
    let cg = MemCgroup::create("earlyoom", None);
    let kernel_kills_before = kernel_oom_kills();
    let mut collector = Collector::start(env, &["--exit-wait", "2s"]);
    let earlyoom = Earlyoom::start(&["-m", "40,30", "-s", "100,100", "-r", "0"]);
    let mut allocator = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", cg.dir_str(), "--adj", "1000", "--ignore-term"],
    );
    let pid = allocator.pid();
    assert_sigkilled(allocator.wait(), "the allocator");
    let found = collector.wait_until(TIMEOUT, |records| {
        records
            .iter()
            .any(|r| r["type"] == "signal_kill" && r["target"]["pid"] == pid)
    });
    let said = earlyoom.said();
    assert!(
        found,
        "no signal_kill of the allocator ({pid}); earlyoom said:\n{said}\nrecords: {:?}\n\
         oomtrace's stderr: {}",
        collector.records,
        collector.stderr_text()
    );
    let record = collector.signal_kill_of(pid, TIMEOUT);
    let context = format!("{record}\nearlyoom said:\n{said}");
    assert!(
        said.contains(&format!("to process {pid} ")),
        "earlyoom chose the allocator: {context}"
    );

    assert_eq!(record["target"]["comm"], "oomtrace-worklo", "{context}");
    assert_eq!(
        record["target"]["cgroup"]["path"],
        cg.path.as_str(),
        "{context}"
    );
    let sender = &record["sender"];
    assert_eq!(sender["pid"], earlyoom.pid(), "{context}");
    assert_eq!(sender["tid"], earlyoom.pid(), "{context}");
    assert_eq!(sender["comm"], "earlyoom", "{context}");
    assert_eq!(sender["uid"], 0, "{context}");
    assert_eq!(sender["kind"], "userspace_oom_killer", "{context}");
    assert_eq!(sender["kind_from"], "comm", "{context}");
    assert_eq!(sender["code"], "user", "kill(2): SI_USER: {context}");
    assert!(record["part_of_oom_kill"].is_null(), "{context}");
    assert_exit_137(&record);

    // The allocator's memory, at the moment earlyoom sent SIGKILL: it ran
    // the machine from (nearly) all of its memory available to under 30%.
    let memcg = &record["memcg"];
    assert_eq!(memcg["path"], cg.path.as_str(), "{context}");
    let usage = memcg["usage_bytes"].as_u64().expect("usage_bytes");
    assert!(
        usage >= total / 4 && usage <= cg.peak(),
        "usage {usage} of {total} bytes (peak {}): {context}",
        cg.peak()
    );
    let anon = record["target"]["rss"]["anon_bytes"]
        .as_u64()
        .expect("anon");
    assert!(anon >= total / 4, "anon rss {anon}: {context}");

    let sigterm = &record["after_sigterm"];
    if said.contains(&format!("sending SIGTERM to process {pid} ")) {
        assert_eq!(sigterm["sender_pid"], earlyoom.pid(), "{context}");
        assert_eq!(sigterm["sender_comm"], "earlyoom", "{context}");
        let ms = sigterm["ms_before"].as_f64().expect("ms_before");
        assert!((0.0..60_000.0).contains(&ms), "{ms} ms: {context}");
    } else {
        assert!(sigterm.is_null(), "earlyoom sent no SIGTERM: {context}");
    }

    // For the console log (target/vmtest/KERNEL.log): what was seen.
    eprintln!("userspace_oom_killer_is_named: {record}");
    drop(earlyoom);
    assert!(collector.stop_with(libc::SIGTERM).success());
    assert!(collector.kills_of(pid).is_empty(), "no oom_kill: {context}");
    assert_eq!(cg.oom_kills(), 0, "no OOM kill in its cgroup: {context}");
    assert_eq!(
        kernel_oom_kills(),
        kernel_kills_before,
        "the kernel's OOM killer did not act: {context}"
    );
    let ours = collector
        .of_type("signal_kill")
        .filter(|r| r["target"]["pid"] == pid)
        .count();
    assert_eq!(ours, 1, "one record: {context}");
}
