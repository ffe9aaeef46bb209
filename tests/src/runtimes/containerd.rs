//! A containerd task as the CRI plugin would make it, made with `ctr`
//! against the containerd our private dockerd starts: namespace `k8s.io`, a
//! kubelet-shaped cgroup (`/oomtrace-test-kubelet-PID/kubepods/burstable/
//! pod<uid>/<id>`, as with the kubelet's `--cgroup-root`), and the CRI
//! annotations in the bundle's config.json.

use std::path::PathBuf;

use super::{
    Engine, KILL_TIMEOUT, Kind, assert_kernel_memcg, collector,
    engine::{CTR, PREFIX, run_command},
    sweep,
};
use crate::{
    cgroup::MemCgroup,
    collector::Env,
    kmsg::Kmsg,
    scenarios::{assert_exit_137, assert_matches_kernel},
};

const NAMESPACE: &str = "k8s.io";
const POD_UID: &str = "3e0c6a1b-7d2f-4b8e-9a51-c4d3e2f1a0b9";
const CONTAINER: &str = "cart";
const POD: &str = "cart-7f9c8d6b5-q4w2e";
const POD_NAMESPACE: &str = "shop";
const IMAGE: &str = "registry.example/shop/cart:1.4.2";

fn ctr(engine: &Engine, args: &[&str]) -> Result<String, String> {
    let socket = engine.dirs.containerd_socket();
    run_command(
        std::process::Command::new(CTR)
            .arg("--address")
            .arg(socket)
            .args(["--namespace", NAMESPACE])
            .args(args),
    )
}

/// Removes every task and container of our private containerd's `k8s.io`
/// namespace (only these tests use it), and the kubelet-shaped cgroups
/// noted in our state.
pub fn sweep(engine: &Engine) {
    if engine.kind != Kind::Docker {
        return;
    }
    if engine.dirs.containerd_socket().exists() {
        for id in ctr(engine, &["containers", "list", "-q"])
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let _ = ctr(engine, &["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = ctr(engine, &["tasks", "delete", "-f", id]);
            let _ = ctr(engine, &["containers", "delete", id]);
        }
    }
    let notes = engine.dirs.cgroup_notes();
    for entry in std::fs::read_dir(&notes).into_iter().flatten().flatten() {
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(PREFIX)
        {
            sweep::remove_cgroup_everywhere(&format!("/{name}"));
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The task, removed on drop (on panic too), with its cgroups.
struct Task<'a> {
    engine: &'a Engine,
    id: String,
    root: MemCgroup,
    note: PathBuf,
    gate: PathBuf,
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        let _ = ctr(self.engine, &["tasks", "kill", "-s", "SIGKILL", &self.id]);
        let _ = ctr(self.engine, &["tasks", "delete", "-f", &self.id]);
        let _ = ctr(self.engine, &["containers", "delete", &self.id]);
        self.root.remove();
        sweep::remove_cgroup_everywhere(&self.root.path);
        let _ = std::fs::remove_file(&self.note);
        let _ = std::fs::remove_dir_all(&self.gate);
        let _ = std::fs::remove_file(self.gate.with_extension("pid"));
    }
}

/// A 64-hex id, as the CRI gives its containers.
fn container_id() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    (0..4u64)
        .map(|i| format!("{:016x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ i) | 1))
        .collect()
}

/// A containerd task's PID 1 is OOM-killed in its kubelet-shaped cgroup:
/// the record has the container's id and pod, and (with names) the CRI's
/// container name and image from the bundle's annotations.
pub fn containerd_cri_names(env: &Env) {
    let engine = Engine::start(Kind::Docker);
    let id = container_id();
    let kubelet = format!("{PREFIX}kubelet-{}", std::process::id());
    std::fs::create_dir_all(engine.dirs.cgroup_notes()).expect("notes dir");
    let note = engine.dirs.cgroup_notes().join(&kubelet);
    std::fs::write(&note, "").expect("note");
    let mut root = MemCgroup::create_named(&kubelet, None);
    let dir = {
        let pod = root
            .child("kubepods", None)
            .child("burstable", None)
            .child(&format!("pod{POD_UID}"), None);
        pod.child(&id, Some(32 << 20)).path.clone()
    };
    let gate = engine.dirs.data.join("gates").join(&kubelet);
    let _ = std::fs::remove_dir_all(&gate);
    std::fs::create_dir_all(&gate).expect("gate");
    let task = Task {
        engine: &engine,
        id: id.clone(),
        root,
        note,
        gate: gate.clone(),
    };
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let mount = format!(
        "type=bind,src={},dst=/gate,options=rbind:rw",
        gate.display()
    );
    let annotations = [
        format!("io.kubernetes.cri.container-name={CONTAINER}"),
        "io.kubernetes.cri.container-type=container".to_string(),
        format!("io.kubernetes.cri.sandbox-name={POD}"),
        format!("io.kubernetes.cri.sandbox-namespace={POD_NAMESPACE}"),
        format!("io.kubernetes.cri.sandbox-uid={POD_UID}"),
        format!("io.kubernetes.cri.image-name={IMAGE}"),
    ];
    let pid_file = gate.with_extension("pid");
    let pid_arg = pid_file.to_str().expect("utf-8");
    let mut args = vec!["run", "-d", "--null-io", "--rootfs", "--cgroup", &dir];
    // runc's state in our exec root, not /run/containerd/runc.
    let runc_root = engine.dirs.docker_exec_root().join("ctr-runc");
    let runc_root = runc_root.to_str().expect("utf-8");
    args.extend(["--pid-file", pid_arg, "--runc-root", runc_root]);
    args.extend(["--mount", &mount]);
    for a in &annotations {
        args.extend(["--annotation", a]);
    }
    let rootfs = engine.rootfs.to_str().expect("utf-8");
    args.extend([
        rootfs,
        &id,
        "/bin/oomtrace-gated",
        "/oomtrace-workload",
        "alloc",
    ]);
    ctr(&engine, &args).unwrap_or_else(|e| panic!("{e}"));
    let bundle = engine
        .dirs
        .containerd_state()
        .join("io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(&id)
        .join("config.json");
    let spec = std::fs::read_to_string(&bundle)
        .unwrap_or_else(|e| panic!("read {}: {e}", bundle.display()));
    assert!(spec.contains(&format!("{CONTAINER}\"")), "{spec}");
    let pid_file = gate.with_extension("pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {}", pid_file.display()));
    let procs = task
        .root
        .dir
        .join(format!("kubepods/burstable/pod{POD_UID}/{id}/cgroup.procs"));
    let inside = std::fs::read_to_string(&procs).unwrap_or_default();
    // (with the gate's `sleep` beside it)
    assert!(
        inside.lines().any(|l| l.trim() == pid.to_string()),
        "PID 1 in {}: {inside}; /proc/{pid}/cgroup: {}",
        procs.display(),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
    );
    std::fs::write(gate.join("go"), "").expect("gate");
    let kernel = kmsg.killed(pid, KILL_TIMEOUT);
    assert_kernel_memcg(&kernel, &dir);
    let record = collector.kill_of(pid, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_eq!(record["victim"]["cgroup"]["path"], dir.as_str(), "{record}");
    assert_eq!(record["victim"]["ns_pid"], 1, "{record}");
    assert_eq!(record["victim"]["container_init"], true, "{record}");
    assert_eq!(record["container_survives"], false, "{record}");
    assert_eq!(record["container"]["id"], id.as_str(), "{record}");
    assert_eq!(record["k8s"]["pod_uid"], POD_UID, "{record}");
    assert_eq!(record["k8s"]["qos"], "burstable", "{record}");
    if super::NAMES {
        // From the bundle's CRI annotations; the runtime too, which the
        // cgroupfs path cannot tell.
        assert_eq!(record["container"]["name"], CONTAINER, "{record}");
        assert_eq!(record["container"]["image"], IMAGE, "{record}");
        assert_eq!(record["container"]["runtime"], "containerd", "{record}");
        assert_eq!(record["k8s"]["namespace"], POD_NAMESPACE, "{record}");
        assert_eq!(record["k8s"]["pod"], POD, "{record}");
        assert_eq!(record["k8s"]["container"], CONTAINER, "{record}");
    } else {
        assert!(record["container"]["runtime"].is_null(), "{record}");
    }
    let exit = collector.container_exit_of(pid, KILL_TIMEOUT);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], record["seq"], "{exit}");
    assert_eq!(exit["container"]["id"], id.as_str(), "{exit}");
    assert_eq!(exit["exit"]["code"], 137, "{exit}");
    println!("containerd record: {record}");
    drop(task);
}
