//! Containers without a pid namespace of their own (`docker run
//! --pid=host`, Kubernetes `hostPID: true`): their processes are in the
//! host's pid namespace, so no process is the container's PID 1 and
//! `container_init` proves nothing. The container's end is read from its
//! cgroup once the victim has exited: empty, it ended; holding others,
//! nobody can say (null), since they may be dying too.
//!
//! Simulated as the other attribution scenarios are (kubelet-shaped cgroups,
//! the kubelet's log layout); the processes are started inside the
//! container's cgroup with `oomtrace-workload exec-in`, as a runtime starts
//! an entrypoint, without a new pid namespace.

use serde_json::Value;

use super::{Driver, KILL_TIMEOUT, Pod, assert_pod_attribution};
use crate::{
    collector::Env,
    kmsg::Kmsg,
    scenarios::{Workload, assert_exit_137, assert_matches_kernel, assert_sigkilled},
    signals::Shell,
};

/// The container's main process, `oomtrace-workload ARGS`, started inside
/// its cgroup in the host's pid namespace, as a runtime starts an
/// entrypoint with `--pid=host`.
fn entrypoint(env: &Env, pod: &Pod, args: &[&str]) -> Workload {
    let workload = env.workload.to_str().expect("utf-8");
    let mut exec_in = vec![pod.container_dir(), workload];
    exec_in.extend_from_slice(args);
    Workload::spawn(env, "exec-in", &exec_in)
}

/// The host's pid namespace, as `start.host.pid_ns` reports it, and the
/// victim's is the same.
fn assert_host_pid_ns(record: &Value, start: &Value) {
    let host = &start["host"]["pid_ns"];
    assert!(host.is_u64(), "start.host.pid_ns: {start}");
    assert_eq!(&record["victim"]["pid_ns"], host, "{record}");
    assert_eq!(
        record["victim"]["ns_pid"], record["victim"]["pid"],
        "{record}"
    );
    assert_eq!(record["victim"]["container_init"], false, "{record}");
}

/// The container's main process (in the host's pid namespace) is the
/// victim: once it has exited the container's cgroup is empty, and the
/// container has ended.
pub fn host_pid_container_main_killed(env: &Env) {
    let pod = Pod::create(Driver::Cgroupfs, Some("burstable"), false);
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let mut main = entrypoint(env, &pod, &["alloc", "--adj", "900"]);
    assert_sigkilled(main.wait(), "the container's main process");
    let kernel = kmsg.killed(main.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(main.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_host_pid_ns(&record, collector.start_record());
    assert_eq!(record["container_survives"], false, "{record}");
    assert_pod_attribution(&record, &pod, Driver::Cgroupfs, "burstable");
    // Its last process gone, the container has ended: found in userspace.
    let exit = collector.container_exit_of(main.pid(), KILL_TIMEOUT);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], record["seq"], "{exit}");
    assert_eq!(exit["container"]["id"], pod.container_id.as_str(), "{exit}");
    assert_eq!(exit["exit"]["code"], 137, "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 0, "{exit}");
}

/// A child of the container's main process is the victim; the main process
/// lives on in the cgroup. Without a pid namespace nothing proves that the
/// container survives (the main process could be on its way out), so the
/// record says null, where the pid-namespace case says true.
pub fn host_pid_container_child_killed(env: &Env) {
    let pod = Pod::create(Driver::Systemd, None, true);
    let mut collector = pod.collector(env);
    let mut kmsg = Kmsg::open();
    let mut main = entrypoint(
        env,
        &pod,
        &["parent", "--linger", "--adj", "900", "--wait-stdin"],
    );
    let victim = super::child_of(main.pid(), std::time::Duration::from_secs(10));
    main.release();
    let (child, _status) = {
        let said = main.said_line("child");
        let mut parts = said.split_whitespace();
        (
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .expect("child pid"),
            parts.next().map(str::to_string),
        )
    };
    assert_eq!(child, victim);
    let kernel = kmsg.killed(victim, KILL_TIMEOUT);
    let record = collector.kill_of(victim, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_host_pid_ns(&record, collector.start_record());
    assert!(
        record["container_survives"].is_null(),
        "the main process lives, but nothing proves the container does: {record}"
    );
    assert_pod_attribution(&record, &pod, Driver::Systemd, "guaranteed");
    // The main process is still there, lingering: someone `kill -9`s it,
    // the container's last process. Its `container_exit` names that sender
    // and counts the child's OOM kill.
    let sender = Shell::once(&format!("kill -9 {}", main.pid()));
    assert_sigkilled(main.wait(), "the main process");
    let exit = collector.container_exit_of(main.pid(), KILL_TIMEOUT);
    assert_eq!(exit["cause"], "signal_kill", "{exit}");
    assert_eq!(exit["sender"]["pid"], sender, "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 1, "{exit}");
    assert_eq!(exit["other_oom_kills"]["seqs"][0], record["seq"], "{exit}");
    let kill = collector.signal_kill_of(main.pid(), KILL_TIMEOUT);
    assert_eq!(kill["container_survives"], false, "{kill}");
    assert_eq!(exit["cause_seq"], kill["seq"], "{exit}");
}
