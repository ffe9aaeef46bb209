//! Attribution scenarios: kills inside kubelet-shaped cgroup trees, checked
//! for which pod, which container, which limit, and whether the container
//! itself died.
//!
//! What is simulated, and how faithfully: there is no kubelet or container
//! runtime here. The memory cgroups are named exactly as the kubelet names
//! them (cgroupfs driver: `kubepods/burstable/pod<uid>/<container-id>`;
//! systemd driver: `kubepods.slice/kubepods-pod<uid_>.slice/
//! cri-containerd-<id>.scope`), under a per-test parent, as with the
//! kubelet's `--cgroup-root`. The log layout the kubelet writes is rebuilt
//! under a temporary `--host-root`: `var/log/pods/<ns>_<pod>_<uid>/<ctr>/0.log`
//! and the `var/log/containers/<pod>_<ns>_<ctr>-<id>.log` symlinks into it.
//! The container's processes run in a new pid namespace (`oomtrace-workload
//! pidns`, i.e. `unshare --pid --fork`), with a shim-like parent outside the
//! cgroup. The kills, the kernel's reports and the wait statuses are real.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::ChildStdout,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::{MemCgroup, oom_kill_count},
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{LIMIT, Workload, assert_exit_137, assert_matches_kernel},
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "shop";
const POD: &str = "cart-5d8f7c9b6-x2x7q";
const CONTAINER: &str = "cart";
const POD_UID: &str = "5f1c3b2a-9e8d-4c7b-a6f5-0e1d2c3b4a59";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    Cgroupfs,
    Systemd,
}

/// A pod with one container, as the kubelet lays it out.
struct Pod {
    /// The test's parent cgroup (the kubelet's `--cgroup-root`); owns the tree.
    root: MemCgroup,
    pod_path: String,
    container_dir: PathBuf,
    container_path: String,
    container_id: String,
    host_root: PathBuf,
}

impl Pod {
    /// `qos`: `burstable`, `besteffort` or None for a Guaranteed pod (which
    /// has no QoS level). `limit_on_pod`: the limit sits on the pod cgroup
    /// (the sum of its containers' limits), else on the container's.
    fn create(driver: Driver, qos: Option<&str>, limit_on_pod: bool) -> Self {
        let container_id = container_id();
        let mut root = MemCgroup::create("kubelet", None);
        let uid_underscored = POD_UID.replace('-', "_");
        let names: Vec<String> = match driver {
            Driver::Cgroupfs => {
                let mut v = vec!["kubepods".to_string()];
                v.extend(qos.map(str::to_string));
                v.push(format!("pod{POD_UID}"));
                v.push(container_id.clone());
                v
            }
            Driver::Systemd => {
                let mut v = vec!["kubepods.slice".to_string()];
                let prefix = match qos {
                    Some(q) => {
                        v.push(format!("kubepods-{q}.slice"));
                        format!("kubepods-{q}")
                    }
                    None => "kubepods".to_string(),
                };
                v.push(format!("{prefix}-pod{uid_underscored}.slice"));
                v.push(format!("cri-containerd-{container_id}.scope"));
                v
            }
        };
        let pod_limit = limit_on_pod.then_some(LIMIT);
        let container_limit = (!limit_on_pod).then_some(LIMIT);
        let mut pod_path = String::new();
        let (mut container_dir, mut container_path) = (PathBuf::new(), String::new());
        let mut level = &mut root;
        let last = names.len() - 1;
        for (i, name) in names.iter().enumerate() {
            let limit = match i {
                _ if i == last => container_limit,
                _ if i == last - 1 => pod_limit,
                _ => None,
            };
            level = level.child(name, limit);
            if i == last - 1 {
                pod_path = level.path.clone();
            }
            if i == last {
                (container_dir, container_path) = (level.dir.clone(), level.path.clone());
            }
        }
        let host_root = kubelet_logs(&container_id);
        Self {
            root,
            pod_path,
            container_dir,
            container_path,
            container_id,
            host_root,
        }
    }

    /// A collector that reads this pod's kubelet log layout.
    fn collector(&self, env: &Env) -> Collector {
        let host_root = self.host_root.to_str().expect("utf-8");
        Collector::start(env, &["--host-root", host_root])
    }

    fn container_dir(&self) -> &str {
        self.container_dir.to_str().expect("utf-8")
    }

    /// The kernel's oom_kill count of the container's cgroup.
    fn container_oom_kills(&self) -> u64 {
        oom_kill_count(&self.container_dir, self.root.version)
    }
}

/// A container whose PID 1 (`oomtrace-workload parent`) runs one child,
/// the allocator, which waits until `start` releases it.
struct ContainerWithChild {
    /// The runtime's shim: outside the cgroup, it forks PID 1.
    shim: Workload,
    out: PidnsOutput,
    /// PID 1's host pid.
    init: u32,
    /// The allocator's host pid.
    victim: u32,
}

impl ContainerWithChild {
    fn start(env: &Env, pod: &Pod) -> Self {
        let dir = pod.container_dir();
        let mut shim = Workload::spawn(
            env,
            "pidns",
            &[
                "--cgroup",
                dir,
                "parent",
                "--cgroup",
                dir,
                "--adj",
                "900",
                "--wait-stdin",
            ],
        );
        let mut out = PidnsOutput::new(&mut shim);
        let init: u32 = out.value("init").parse().expect("pid");
        let victim = child_of(init, Duration::from_secs(10));
        shim.release();
        Self {
            shim,
            out,
            init,
            victim,
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.root.remove();
        let _ = std::fs::remove_dir_all(&self.host_root);
    }
}

/// A 64-hex container id, different per call.
fn container_id() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 32;
    (0..4)
        .map(|i| {
            format!(
                "{:016x}",
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64.wrapping_add(i))
            )
        })
        .collect()
}

/// A host root holding the kubelet's log layout for the pod.
fn kubelet_logs(container_id: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!(
        "oomtrace-hostroot-{}-{container_id}",
        std::process::id()
    ));
    let pod_dir = format!("var/log/pods/{NAMESPACE}_{POD}_{POD_UID}");
    let log_dir = root.join(&pod_dir).join(CONTAINER);
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    std::fs::write(
        log_dir.join("0.log"),
        "2026-11-22T00:00:00Z stdout F started\n",
    )
    .expect("log");
    // Another pod on the node, and the kubelet's own noise.
    let other = root.join("var/log/pods/kube-system_coredns-5d78c9869d-abcde_0a1b2c3d-0000-4000-8000-000000000001/coredns");
    std::fs::create_dir_all(&other).expect("other pod");
    let containers = root.join("var/log/containers");
    std::fs::create_dir_all(&containers).expect("containers dir");
    // The kubelet's symlink is absolute on the real host; it dangles here,
    // and oomtrace must not need to follow it.
    std::os::unix::fs::symlink(
        format!("/{pod_dir}/{CONTAINER}/0.log"),
        containers.join(format!("{POD}_{NAMESPACE}_{CONTAINER}-{container_id}.log")),
    )
    .expect("symlink");
    root
}

/// Reads `oomtrace-workload pidns` output lines.
struct PidnsOutput {
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl PidnsOutput {
    fn new(workload: &mut Workload) -> Self {
        let stdout = workload.child.stdout.take().expect("stdout");
        Self {
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The value of the next line that starts with `key `.
    fn value(&mut self, key: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("workload output");
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
                return v.to_string();
            }
        }
        panic!("workload ended before printing {key}")
    }
}

/// The first child of `parent`, from /proc/*/stat (works without
/// CONFIG_PROC_CHILDREN).
fn child_of(parent: u32, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the parenthesised comm: state, ppid, ...
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            if after.split_whitespace().nth(1) == Some(&parent.to_string()) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no child of {parent} appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The attribution every kill in the pod must carry.
fn assert_pod_attribution(record: &Value, pod: &Pod, driver: Driver, qos: &str) {
    let k8s = &record["k8s"];
    assert_eq!(k8s["namespace"], NAMESPACE, "namespace: {record}");
    assert_eq!(k8s["pod"], POD, "pod: {record}");
    assert_eq!(k8s["pod_uid"], POD_UID, "pod uid: {record}");
    assert_eq!(k8s["container"], CONTAINER, "container name: {record}");
    assert_eq!(k8s["qos"], qos, "qos: {record}");
    let container = &record["container"];
    assert_eq!(
        container["id"],
        pod.container_id.as_str(),
        "container id: {record}"
    );
    match driver {
        Driver::Systemd => assert_eq!(container["runtime"], "containerd", "{record}"),
        // `kubepods/.../pod<uid>/<id>` does not say which runtime made it.
        Driver::Cgroupfs => assert!(container["runtime"].is_null(), "{record}"),
    }
    assert_eq!(
        record["victim"]["cgroup"]["path"],
        pod.container_path.as_str(),
        "{record}"
    );
}

/// `oom.memcg_path`, `memcg_source` and `limit_scope`: from the hook when
/// `oom_kill_process` is attached, else derived from the memcg levels read
/// at the kill; either way the cgroup whose limit the test set.
fn assert_limit(record: &Value, start: &Value, fired_path: &str, scope: &str) {
    let hooked = start["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "oom_kill_process"))
        .is_some_and(|p| !p["mode"].is_null());
    let oom = &record["oom"];
    assert_eq!(
        oom["memcg_path"], fired_path,
        "the limit that fired: {record}"
    );
    let source = if hooked {
        "oom_kill_process"
    } else if oom["kernel_log"] == "matched" {
        "kernel_log"
    } else {
        "usage_at_limit"
    };
    assert_eq!(oom["memcg_source"], source, "{record}");
    assert_eq!(oom["limit_scope"], scope, "{record}");
}

/// The container's PID 1 is the victim, with the limit on the container
/// (cgroupfs driver, Burstable): the container dies, and the record says so.
pub fn container_init_killed(env: &Env) {
    let pod = Pod::create(Driver::Cgroupfs, Some("burstable"), false);
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let mut shim = Workload::spawn(
        env,
        "pidns",
        &["--cgroup", pod.container_dir(), "alloc", "--adj", "900"],
    );
    let mut out = PidnsOutput::new(&mut shim);
    let init: u32 = out.value("init").parse().expect("pid");
    let status =
        std::process::ExitStatus::from_raw(out.value("init-status").parse().expect("status"));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the container's PID 1 died of SIGKILL"
    );
    let kernel = kmsg.killed(init, KILL_TIMEOUT);
    let record = collector.kill_of(init, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_eq!(record["victim"]["ns_pid"], 1, "{record}");
    assert_eq!(record["victim"]["container_init"], true, "{record}");
    assert_eq!(record["container_survives"], false, "{record}");
    assert_pod_attribution(&record, &pod, Driver::Cgroupfs, "burstable");
    assert_limit(
        &record,
        collector.start_record(),
        &pod.container_path,
        "container",
    );
    assert_eq!(pod.container_oom_kills(), 1);
    exits::assert_init_oom_exit(&mut collector, &pod, init, &record);
    let _ = shim.wait();
}

/// A child of the container's PID 1 is the victim, with the limit on the
/// pod (systemd driver, Guaranteed: no QoS level): PID 1 lives on, so the
/// container keeps running, and the record says that plainly.
pub fn container_child_killed_container_survives(env: &Env) {
    let pod = Pod::create(Driver::Systemd, None, true);
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let ContainerWithChild {
        mut shim,
        mut out,
        victim,
        init,
    } = ContainerWithChild::start(env, &pod);
    let kernel = kmsg.killed(victim, KILL_TIMEOUT);
    let record = collector.kill_of(victim, KILL_TIMEOUT);
    // PID 1 (the `parent` workload) saw its child die of SIGKILL and lived.
    let child_line = out.value("child");
    let (ns_pid, raw) = child_line.split_once(' ').expect("child PID STATUS");
    assert_eq!(
        std::process::ExitStatus::from_raw(raw.parse().expect("status")).signal(),
        Some(libc::SIGKILL)
    );
    let init_status =
        std::process::ExitStatus::from_raw(out.value("init-status").parse().expect("status"));
    assert_eq!(
        init_status.code(),
        Some(0),
        "the container's PID 1 survived"
    );
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_eq!(
        record["victim"]["ns_pid"],
        ns_pid.parse::<u32>().expect("pid"),
        "{record}"
    );
    assert_eq!(record["victim"]["container_init"], false, "{record}");
    assert_eq!(record["container_survives"], true, "{record}");
    assert_pod_attribution(&record, &pod, Driver::Systemd, "guaranteed");
    assert_limit(&record, collector.start_record(), &pod.pod_path, "pod");
    // The kernel counts the kill in the victim's memcg (and, on cgroup v2,
    // hierarchically in the pod's memory.events too).
    assert_eq!(pod.container_oom_kills(), 1);
    exits::assert_exit_after_child_kill(&mut collector, &pod, init, &record);
    let _ = shim.wait();
}

/// `memory.oom.group` on the container's cgroup (what the kubelet sets on
/// cgroup v2 since 1.28): a child of PID 1 is chosen, and the kernel kills
/// every process in the container with it, PID 1 included. Neither record
/// may claim that the container survives. cgroup v2 only.
pub fn oom_group_takes_the_container(env: &Env) {
    let pod = Pod::create(Driver::Systemd, Some("burstable"), false);
    assert_eq!(
        pod.root.version,
        crate::cgroup::Version::V2,
        "memory.oom.group needs cgroup v2"
    );
    std::fs::write(pod.container_dir.join("memory.oom.group"), "1").expect("memory.oom.group");
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let ContainerWithChild {
        mut shim,
        mut out,
        init,
        victim,
    } = ContainerWithChild::start(env, &pod);
    let init_status =
        std::process::ExitStatus::from_raw(out.value("init-status").parse().expect("status"));
    assert_eq!(
        init_status.signal(),
        Some(libc::SIGKILL),
        "PID 1 went with the group"
    );
    let chosen = kmsg.killed(victim, KILL_TIMEOUT);
    let member = kmsg.killed(init, KILL_TIMEOUT);
    let chosen_record = collector.kill_of(victim, KILL_TIMEOUT);
    let member_record = collector.kill_of(init, KILL_TIMEOUT);
    let hooked = collector.start_record()["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "oom_kill_process"))
        .is_some_and(|p| !p["mode"].is_null());
    for (record, kernel, is_init) in [
        (&chosen_record, &chosen, false),
        (&member_record, &member, true),
    ] {
        assert_matches_kernel(record, kernel);
        assert_exit_137(record);
        assert_eq!(record["victim"]["container_init"], is_init, "{record}");
        assert_eq!(record["container_survives"], false, "{record}");
        assert_eq!(record["memcg"]["levels"][0]["oom_group"], true, "{record}");
        // Each member is an OOM kill of its own, killed by the OOM killer.
        assert_eq!(record["oom"]["killed"], true, "{record}");
        assert_pod_attribution(record, &pod, Driver::Systemd, "burstable");
        if hooked {
            // Both die in the one oom_kill_process() call that chose `victim`.
            assert_eq!(record["oom"]["chosen_pid"], victim, "{record}");
            assert_eq!(record["oom"]["limit_scope"], "container", "{record}");
        }
    }
    // One record per process: mark_victim fires once per task (TIF_MEMDIE).
    let ours = collector
        .kills()
        .filter(|r| r["victim"]["pid"] == victim || r["victim"]["pid"] == init)
        .count();
    assert_eq!(ours, 2, "one record each for the chosen task and PID 1");
    let as_signal_kills = collector
        .of_type("signal_kill")
        .filter(|r| r["target"]["pid"] == victim || r["target"]["pid"] == init)
        .count();
    assert_eq!(as_signal_kills, 0, "no member is also a signal kill");
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], member_record["seq"], "{exit}");
    // The kernel counts a kill per SIGKILL it sends: the group scan
    // (mem_cgroup_scan_tasks) reaches the chosen task again when its mm is
    // not gone yet, and counts it twice then.
    let counted = pod.container_oom_kills();
    assert!(matches!(counted, 2 | 3), "memory.events oom_kill {counted}");
    let _ = shim.wait();
}

mod exits;
mod host_pid;
pub use exits::{
    assert_exit_not_oom_after, container_drained_after_a_child_oom, container_stop_timeout,
};
pub use host_pid::{host_pid_container_child_killed, host_pid_container_main_killed};
