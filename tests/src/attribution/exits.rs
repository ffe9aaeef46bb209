//! `container_exit`: the verdict on a container PID 1's exit, for
//! containers simulated as the other attribution scenarios simulate them
//! (a kubelet-shaped cgroup, a pid namespace of their own, a shim outside).
//! The PID 1 exits, their causes and statuses are real.

use std::os::unix::process::ExitStatusExt;

use serde_json::Value;

use super::{Driver, KILL_TIMEOUT, PidnsOutput, Pod, assert_pod_attribution, child_of};
use crate::{
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::assert_exit_137,
    signals::Shell,
    workload::{Workload, wait_until_ignoring_term},
};

/// What every `container_exit` of the pod's container carries.
fn assert_container_exit(exit: &Value, pod: &Pod, init: u32, code: i32) {
    assert_eq!(exit["pid"], init, "{exit}");
    assert_eq!(
        exit["cgroup"]["path"],
        pod.container_path.as_str(),
        "{exit}"
    );
    assert_eq!(exit["container"]["id"], pod.container_id.as_str(), "{exit}");
    assert_eq!(exit["k8s"]["pod"], super::POD, "{exit}");
    assert_eq!(exit["k8s"]["container"], super::CONTAINER, "{exit}");
    assert_eq!(exit["exit"]["observed"], true, "{exit}");
    assert_eq!(exit["exit"]["code"], code, "{exit}");
    assert!(exit["other_oom_kills"]["since"].is_string(), "{exit}");
}

/// PID 1 ignores SIGTERM; the "runtime" sends SIGKILL a second later, as
/// `docker stop -t 1` or the kubelet after its grace period: the
/// `signal_kill` names the sender and the SIGTERM before it, and the
/// `container_exit` says `signal_kill` with that sender, no OOM anywhere.
pub fn container_stop_timeout(env: &Env) {
    let pod = Pod::create(Driver::Cgroupfs, Some("besteffort"), false);
    let mut collector = pod.collector(env);
    let mut shim = Workload::spawn(
        env,
        "pidns",
        &["--cgroup", pod.container_dir(), "idle", "--ignore-term"],
    );
    let mut out = PidnsOutput::new(&mut shim);
    let init: u32 = out.value("init").parse().expect("pid");
    wait_until_ignoring_term(init);
    let runtime = Shell::run(&format!("kill -TERM {init}; sleep 1; kill -KILL {init}"));
    let status =
        std::process::ExitStatus::from_raw(out.value("init-status").parse().expect("status"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "PID 1 got SIGKILL");
    let kill = collector.signal_kill_of(init, KILL_TIMEOUT);
    assert_eq!(kill["sender"]["pid"], runtime.pid(), "{kill}");
    assert_eq!(kill["target"]["container_init"], true, "{kill}");
    assert_eq!(kill["container_survives"], false, "{kill}");
    assert_eq!(kill["after_sigterm"]["sender_pid"], runtime.pid(), "{kill}");
    let ms = kill["after_sigterm"]["ms_before"].as_f64().expect("ms");
    assert!((900.0..30_000.0).contains(&ms), "{ms} ms: {kill}");
    assert_exit_137(&kill);
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    assert_container_exit(&exit, &pod, init, 137);
    assert_eq!(exit["cause"], "signal_kill", "{exit}");
    assert_eq!(exit["cause_seq"], kill["seq"], "{exit}");
    assert_eq!(exit["sender"]["pid"], runtime.pid(), "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 0, "{exit}");
    assert_eq!(pod.container_oom_kills(), 0);
    drop(runtime);
    let _ = shim.wait();
}

/// kubernetes #140716: a container whose child was OOM-killed earlier is
/// drained; its PID 1 handles SIGTERM and exits 143. The verdict is `exit`
/// (not an OOM), with the earlier child kill counted.
pub fn container_drained_after_a_child_oom(env: &Env) {
    let pod = Pod::create(Driver::Systemd, Some("burstable"), false);
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let dir = pod.container_dir();
    let mut shim = Workload::spawn(
        env,
        "pidns",
        &[
            "--cgroup",
            dir,
            "parent",
            "--linger",
            "--term-exit",
            "143",
            "--cgroup",
            dir,
            "--adj",
            "900",
        ],
    );
    let mut out = PidnsOutput::new(&mut shim);
    let init: u32 = out.value("init").parse().expect("pid");
    let victim = child_of(init, std::time::Duration::from_secs(10));
    let _ = out.value("child");
    kmsg.killed(victim, KILL_TIMEOUT);
    let child_kill = collector.kill_of(victim, KILL_TIMEOUT);
    assert_eq!(child_kill["container_survives"], true, "{child_kill}");
    Shell::once(&format!("kill -TERM {init}"));
    let status =
        std::process::ExitStatus::from_raw(out.value("init-status").parse().expect("status"));
    assert_eq!(status.code(), Some(143), "PID 1 exited 143 on SIGTERM");
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    assert_container_exit(&exit, &pod, init, 143);
    assert_exit_not_oom_after(&exit, &child_kill);
    assert_pod_attribution(&child_kill, &pod, Driver::Systemd, "burstable");
    assert_eq!(pod.container_oom_kills(), 1);
    let _ = shim.wait();
}

/// The `container_exit` of a PID 1 the OOM killer took
/// ([`super::container_init_killed`]).
pub fn assert_init_oom_exit(collector: &mut Collector, pod: &Pod, init: u32, kill: &Value) {
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    assert_container_exit(&exit, pod, init, 137);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], kill["seq"], "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 0, "{exit}");
}

/// The `container_exit` of a PID 1 that ended by itself after a child's OOM
/// kill ([`super::container_child_killed_container_survives`]).
pub fn assert_exit_after_child_kill(
    collector: &mut Collector,
    pod: &Pod,
    init: u32,
    child_kill: &Value,
) {
    let exit = collector.container_exit_of(init, KILL_TIMEOUT);
    assert_container_exit(&exit, pod, init, 0);
    assert_eq!(exit["cause"], "exit", "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 1, "{exit}");
    assert_eq!(
        exit["other_oom_kills"]["seqs"][0], child_kill["seq"],
        "{exit}"
    );
}

/// A `container_exit` whose cause is the exit itself (not an OOM kill),
/// with one earlier OOM kill in the container, `child_kill`, counted.
pub fn assert_exit_not_oom_after(exit: &Value, child_kill: &Value) {
    assert_eq!(exit["cause"], "exit", "not an OOM kill: {exit}");
    assert!(exit["cause_seq"].is_null(), "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 1, "{exit}");
    assert_eq!(
        exit["other_oom_kills"]["seqs"][0], child_kill["seq"],
        "{exit}"
    );
}
