//! The real records README.md shows, captured from real OOM kills:
//! `cargo xtask docs --capture` runs [`capture`] (root), then writes each
//! record into README.md where its `<!-- example:NAME -->` marker is. The
//! record crate's tests fail when an example there no longer is what the
//! collector writes.
//!
//! - `demo`: one process in a 64 MiB cgroup, `oom_score_adj` 500, with the
//!   kernel's own `Killed process` line (`demo.kmsg`).
//! - `late_exit`: the `late_exit` of a pipeline's `tail` in a 24 MiB cgroup
//!   that took longer than `--exit-wait 300ms` to die (the OOM reaper's
//!   2 s); tried a few times, as most victims die at once.
//! - `kubelet`: PID 2 of a container in a kubelet-shaped tree (systemd
//!   driver, a Burstable pod whose limit is on the pod level, a containerd
//!   scope, the kubelet's log directories under `--host-root`), as the
//!   attribution scenarios build it.
//! - `stop_timeout` and `stop_timeout_exit`: the PID 1 of a container in
//!   the same kind of tree ignores SIGTERM, and the "runtime" (a shell)
//!   sends SIGKILL a second later: its `signal_kill` and `container_exit`.
//! - `drained_exit`: a container whose child was OOM-killed is drained:
//!   PID 1 handles SIGTERM and exits 143 (kubernetes #140716).
//! - `docker`: the PID 1 of a real Docker container (`docker run --memory
//!   32m`, a private dockerd as the runtime tests start it) OOM-killed,
//!   named from Docker's own state.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::{KilledProcess, Kmsg},
    scenarios::{Workload, assert_sigkilled},
    signals::Shell,
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "shop";
const POD: &str = "cart-5d8f7c9b6-x2x7q";
const CONTAINER: &str = "cart";
const POD_UID: &str = "5f1c3b2a-9e8d-4c7b-a6f5-0e1d2c3b4a59";
const CONTAINER_ID: &str = "3f4e9a1c0b7d2e8f6a5c4b3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

/// Where the captured records go: $OOMTRACE_EXAMPLES_DIR, else
/// target/readme-examples.
pub fn examples_dir() -> PathBuf {
    std::env::var_os("OOMTRACE_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/readme-examples"))
}

/// Causes the kills and writes `NAME.json` (the line as written) for
/// each, and `demo.kmsg`.
pub fn capture(env: &Env) {
    let dir = examples_dir();
    std::fs::create_dir_all(&dir).expect("examples dir");
    let save = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("captured {}", path.display());
    };
    let (demo, kernel) = demo(env);
    save("demo.json", &demo.to_string());
    save("demo.kmsg", &kernel_line(&kernel));
    save("late_exit.json", &late_exit(env).to_string());
    save("kubelet.json", &kubelet(env).to_string());
    let (kill, exit) = stop_timeout(env);
    save("stop_timeout.json", &kill.to_string());
    save("stop_timeout_exit.json", &exit.to_string());
    save("drained_exit.json", &drained(env).to_string());
    save("docker.json", &docker(env).to_string());
    save("leak.json", &crate::memory::leak_record(env).to_string());
    save("spike.json", &crate::memory::spike_record(env).to_string());
    save("shmem.json", &crate::memory::tmpfs_record(env).to_string());
    let (start, end) = crate::stall::stall_records(env);
    save("stall_start.json", &start.to_string());
    save("stall_end.json", &end.to_string());
}

/// A real Docker container whose PID 1 allocates past `--memory 32m`.
fn docker(env: &Env) -> Value {
    use crate::runtimes::{Engine, Kind};
    let mut engine = Engine::start(Kind::Docker);
    let mut collector = crate::runtimes::collector(env, &engine);
    let c = engine.run("web", &[], &["/oomtrace-workload", "alloc"]);
    c.release();
    assert_eq!(engine.wait(&c), 137, "the container's exit code");
    collector.kill_of(c.pid, KILL_TIMEOUT)
}

/// A kubelet-shaped container cgroup (systemd driver, Burstable pod with
/// its limit on the pod level, containerd scope) under a test cgroup named
/// `name`, the kubelet's logs under a temporary `--host-root`, and a
/// collector reading them.
struct KubeletContainer {
    /// Owns the tree (removed on drop).
    _root: MemCgroup,
    dir: String,
    host_root: PathBuf,
    collector: Collector,
}

impl KubeletContainer {
    fn create(env: &Env, name: &str) -> Self {
        let mut root = MemCgroup::create_named(name, None);
        let pod_slice = format!("kubepods-burstable-pod{}.slice", POD_UID.replace('-', "_"));
        let dir = root
            .child("kubepods.slice", None)
            .child("kubepods-burstable.slice", None)
            .child(&pod_slice, Some(256 << 20))
            .child(&format!("cri-containerd-{CONTAINER_ID}.scope"), None)
            .dir_str()
            .to_string();
        let host_root = kubelet_logs();
        let host_root_arg = host_root.to_str().expect("utf-8");
        let collector = Collector::start(env, &["--host-root", host_root_arg]);
        Self {
            _root: root,
            dir,
            host_root,
            collector,
        }
    }
}

impl Drop for KubeletContainer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host_root);
    }
}

fn stop_timeout(env: &Env) -> (Value, Value) {
    let mut container = KubeletContainer::create(env, "readme-stop");
    let dir = container.dir.clone();
    let collector = &mut container.collector;
    let mut shim = Workload::spawn(env, "pidns", &["--cgroup", &dir, "idle", "--ignore-term"]);
    let mut shim_says = BufReader::new(shim.child.stdout.take().expect("stdout")).lines();
    let init: u32 = said(&mut shim_says, "init").parse().expect("pid");
    // PID 1 ignores SIGTERM once it has printed `idle`.
    std::thread::sleep(Duration::from_millis(500));
    let runtime = Shell::run(&format!("kill -TERM {init}; sleep 1; kill -KILL {init}"));
    let _ = said(&mut shim_says, "init-status");
    let kill = collector.signal_kill_of(init, KILL_TIMEOUT);
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    drop(runtime);
    let _ = shim.wait();
    (kill, exit)
}

fn drained(env: &Env) -> Value {
    let mut container = KubeletContainer::create(env, "readme-drained");
    let dir = container.dir.clone();
    let collector = &mut container.collector;
    let mut shim = Workload::spawn(
        env,
        "pidns",
        &[
            "--cgroup",
            &dir,
            "parent",
            "--linger",
            "--term-exit",
            "143",
            "--cgroup",
            &dir,
            "--adj",
            "900",
        ],
    );
    let mut shim_says = BufReader::new(shim.child.stdout.take().expect("stdout")).lines();
    let init: u32 = said(&mut shim_says, "init").parse().expect("pid");
    let _ = said(&mut shim_says, "child");
    collector.kill_matching(|r| r["victim"]["ns_pid"] == 2, KILL_TIMEOUT);
    Shell::once(&format!("kill -TERM {init}"));
    let _ = said(&mut shim_says, "init-status");
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    let _ = shim.wait();
    exit
}

fn demo(env: &Env) -> (Value, KilledProcess) {
    let cg = MemCgroup::create_named("readme-demo", Some(64 << 20));
    let mut collector = Collector::start(env, &[]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--adj", "500"]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    (record, kernel)
}

/// The kernel's line as dmesg shows it (mm/oom_kill.c's
/// __oom_kill_process()).
fn kernel_line(k: &KilledProcess) -> String {
    format!(
        "{}: Killed process {} ({}) total-vm:{}kB, anon-rss:{}kB, file-rss:{}kB, \
         shmem-rss:{}kB, UID:{} pgtables:{}kB oom_score_adj:{}",
        k.reason,
        k.pid,
        String::from_utf8_lossy(&k.comm),
        k.total_vm_kb,
        k.anon_rss_kb,
        k.file_rss_kb,
        k.shmem_rss_kb,
        k.uid,
        k.pgtables_kb,
        k.oom_score_adj
    )
}

fn late_exit(env: &Env) -> Value {
    let cg = MemCgroup::create_named("readme-pipeline", Some(24 << 20));
    let mut collector = Collector::start(env, &["--exit-wait", "300ms"]);
    for _ in 0..30 {
        let mut pipeline = Workload::spawn(
            env,
            "exec-in",
            &[
                cg.dir_str(),
                "sh",
                "-c",
                "head -c 200000000 /dev/zero | tail",
            ],
        );
        let _ = pipeline.wait();
        // A victim the reaper helps dies about 2 s after its kill.
        collector.wait_until(Duration::from_secs(4), |records| {
            records.iter().any(|r| r["type"] == "late_exit")
        });
        if let Some(late) = collector.late_exits().next() {
            return late.clone();
        }
    }
    panic!("no victim of 30 took longer than the exit wait to die")
}

fn kubelet(env: &Env) -> Value {
    let mut container = KubeletContainer::create(env, "readme-kubelet");
    let dir = container.dir.clone();
    let collector = &mut container.collector;
    // The runtime's shim starts PID 1 in a new pid namespace; PID 1 runs
    // the allocator as its child, PID 2, which the limit kills.
    let mut shim = Workload::spawn(
        env,
        "pidns",
        &["--cgroup", &dir, "parent", "--cgroup", &dir, "--adj", "900"],
    );
    // Read for as long as the shim runs: it and PID 1 report on this pipe.
    let mut shim_says = BufReader::new(shim.child.stdout.take().expect("stdout")).lines();
    let init: u32 = said(&mut shim_says, "init").parse().expect("pid");
    let deadline = Instant::now() + KILL_TIMEOUT;
    let record = loop {
        let found = collector
            .kills()
            .find(|r| r["victim"]["ns_pid"] == 2)
            .cloned();
        if let Some(record) = found {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "no kill of the container's PID 2"
        );
        collector.wait_until(Duration::from_millis(200), |records| {
            records.iter().any(|r| r["victim"]["ns_pid"] == 2)
        });
    };
    // PID 1's report on its child, then the shim's on PID 1.
    let _ = said(&mut shim_says, "init-status");
    let _ = shim.wait();
    assert_ne!(record["victim"]["pid"], init, "{record}");
    record
}

/// The shim's next `KEY VALUE` line.
fn said(lines: &mut impl Iterator<Item = std::io::Result<String>>, key: &str) -> String {
    for line in lines {
        let line = line.expect("workload output");
        if let Some(value) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
            return value.to_string();
        }
    }
    panic!("the workload ended before printing {key}")
}

/// The kubelet's log layout for the pod, under a temporary host root.
fn kubelet_logs() -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("oomtrace-readme-hostroot-{}", std::process::id()));
    let pod_dir = format!("var/log/pods/{NAMESPACE}_{POD}_{POD_UID}");
    let log_dir = root.join(&pod_dir).join(CONTAINER);
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    std::fs::write(log_dir.join("0.log"), "").expect("log");
    let containers = root.join("var/log/containers");
    std::fs::create_dir_all(&containers).expect("containers dir");
    std::os::unix::fs::symlink(
        format!("/{pod_dir}/{CONTAINER}/0.log"),
        containers.join(format!("{POD}_{NAMESPACE}_{CONTAINER}-{CONTAINER_ID}.log")),
    )
    .expect("symlink");
    root
}
