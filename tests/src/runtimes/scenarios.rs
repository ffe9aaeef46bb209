//! The scenarios, each for Docker and for Podman: real containers
//! OOM-killed at `--memory 32m --memory-swap 32m`, their records checked
//! against the kernel log and the runtime's `inspect`.

use serde_json::Value;

use super::{
    Container, Engine, KILL_TIMEOUT, Kind, assert_container, assert_inspect, assert_kernel_memcg,
    collector, sweep, verdict,
};
use crate::{
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{assert_exit_137, assert_matches_kernel},
    workload::wait_until_ignoring_term,
};

const WORKLOAD: &str = "/oomtrace-workload";

/// The kill of `c`'s PID 1 and its `container_exit`, checked.
fn assert_init_killed(
    collector: &mut Collector,
    kmsg: &mut Kmsg,
    engine: &Engine,
    c: &Container,
    state: &Value,
) -> Value {
    let cgroup = engine.cgroup_path(&c.id);
    let kernel = kmsg.killed(c.pid, KILL_TIMEOUT);
    assert_kernel_memcg(&kernel, &cgroup);
    let record = collector.kill_of(c.pid, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_container(&record, engine, c, state);
    assert_eq!(record["victim"]["cgroup"]["path"], cgroup, "{record}");
    assert_eq!(record["victim"]["ns_pid"], 1, "{record}");
    assert_eq!(record["victim"]["container_init"], true, "{record}");
    assert_eq!(record["container_survives"], false, "{record}");
    assert_eq!(record["oom"]["memcg_path"], cgroup, "{record}");
    let exit = collector.container_exit_of(c.pid, KILL_TIMEOUT);
    assert_exit(&exit, engine, c, state, 137);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], record["seq"], "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 0, "{exit}");
    record
}

/// What every `container_exit` of `c` carries.
fn assert_exit(exit: &Value, engine: &Engine, c: &Container, state: &Value, code: i64) {
    assert_eq!(exit["pid"], c.pid, "{exit}");
    assert_eq!(exit["cgroup"]["path"], engine.cgroup_path(&c.id), "{exit}");
    assert_container(exit, engine, c, state);
    assert_eq!(exit["exit"]["observed"], true, "{exit}");
    assert_eq!(exit["exit"]["code"], code, "{exit}");
}

/// The `container_exit` of `c`, whose PID 1 exited `code` on its own
/// (not an OOM kill) after its child's kill `child_kill`, counted in it.
fn assert_exit_after_child_kill(
    collector: &mut Collector,
    engine: &Engine,
    c: &Container,
    running: &Value,
    code: i64,
    child_kill: &Value,
) {
    let exit = collector.container_exit_of(c.pid, KILL_TIMEOUT);
    assert_exit(&exit, engine, c, running, code);
    crate::attribution::assert_exit_not_oom_after(&exit, child_kill);
}

/// The OOM kill of a child of `c`'s PID 1 (the one workload allocating).
fn assert_child_killed(
    collector: &mut Collector,
    kmsg: &mut Kmsg,
    engine: &Engine,
    c: &Container,
    state: &Value,
) -> Value {
    let id = c.id.clone();
    let record = collector.kill_matching(|r| r["container"]["id"] == id.as_str(), KILL_TIMEOUT);
    let victim = record["victim"]["pid"].as_u64().expect("pid") as u32;
    assert_ne!(victim, c.pid, "a child, not PID 1: {record}");
    let kernel = kmsg.killed(victim, KILL_TIMEOUT);
    let cgroup = engine.cgroup_path(&c.id);
    assert_kernel_memcg(&kernel, &cgroup);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_container(&record, engine, c, state);
    assert_eq!(record["victim"]["cgroup"]["path"], cgroup, "{record}");
    assert_eq!(record["victim"]["container_init"], false, "{record}");
    assert_eq!(record["container_survives"], true, "{record}");
    record
}

/// A container's PID 1 is OOM-killed: the container exits 137.
pub fn pid1_killed(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let c = engine.run("pid1", &[], &[WORKLOAD, "alloc"]);
    let running = engine.inspect(&c.name);
    c.release();
    assert_eq!(engine.wait(&c), 137);
    let state = engine.inspect(&c.name);
    assert_inspect(&state, &c, 137);
    assert_init_killed(&mut collector, &mut kmsg, &engine, &c, &running);
    verdict(
        &engine,
        "pid1_killed",
        Some(&state),
        "oom_kill init, container_exit oom_kill 137",
    );
}

/// A child of PID 1 is OOM-killed; PID 1 lives on, then exits 0.
pub fn child_killed_container_survives(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let c = engine.run("child", &[], &[WORKLOAD, "parent"]);
    let running = engine.inspect(&c.name);
    c.release();
    let record = assert_child_killed(&mut collector, &mut kmsg, &engine, &c, &running);
    assert_eq!(engine.wait(&c), 0);
    let state = engine.inspect(&c.name);
    assert_inspect(&state, &c, 0);
    assert_exit_after_child_kill(&mut collector, &engine, &c, &running, 0, &record);
    verdict(
        &engine,
        "child_killed_container_survives",
        Some(&state),
        "oom_kill child (container_survives true), container_exit exit 0, 1 other",
    );
}

/// A child is OOM-killed; later the container is stopped and its PID 1
/// exits 143 on SIGTERM: not an OOM kill, with the child's counted.
pub fn child_killed_then_stopped(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let c = engine.run(
        "stopped",
        &["-i"],
        &[WORKLOAD, "parent", "--linger", "--term-exit", "143"],
    );
    let running = engine.inspect(&c.name);
    c.release();
    let record = assert_child_killed(&mut collector, &mut kmsg, &engine, &c, &running);
    assert!(
        sweep::alive(c.pid as i32),
        "PID 1 lingers until stopped: {}",
        engine.inspect(&c.name)
    );
    engine.cli(&["stop", "-t", "10", &c.name]);
    assert_eq!(engine.wait(&c), 143);
    let state = engine.inspect(&c.name);
    assert_inspect(&state, &c, 143);
    assert_exit_after_child_kill(&mut collector, &engine, &c, &running, 143, &record);
    verdict(
        &engine,
        "child_killed_then_stopped",
        Some(&state),
        "oom_kill child, container_exit exit 143, 1 other",
    );
}

/// Two containers' PID 1s are OOM-killed at once: one record each.
pub fn two_containers_at_once(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let a = engine.run("two-a", &[], &[WORKLOAD, "alloc"]);
    let b = engine.run("two-b", &[], &[WORKLOAD, "alloc"]);
    let (running_a, running_b) = (engine.inspect(&a.name), engine.inspect(&b.name));
    a.release();
    b.release();
    for (c, running) in [(&a, &running_a), (&b, &running_b)] {
        assert_eq!(engine.wait(c), 137);
        let state = engine.inspect(&c.name);
        assert_inspect(&state, c, 137);
        assert_init_killed(&mut collector, &mut kmsg, &engine, c, running);
        verdict(
            &engine,
            "two_containers_at_once",
            Some(&state),
            "oom_kill init each",
        );
    }
    for c in [&a, &b] {
        let kills = collector
            .kills()
            .filter(|r| r["container"]["id"] == c.id.as_str())
            .count();
        assert_eq!(kills, 1, "one record for {}", c.name);
    }
}

/// The container is removed (`rm -f`) as soon as the kernel has killed
/// its PID 1: the record is complete all the same.
pub fn removed_right_after_the_kill(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let c = engine.run("removed", &[], &[WORKLOAD, "alloc"]);
    let running = engine.inspect(&c.name);
    c.release();
    kmsg.killed(c.pid, KILL_TIMEOUT);
    let rm: &[&str] = match kind {
        Kind::Docker => &["rm", "-f"],
        Kind::Podman => &["rm", "-f", "-t", "0"],
    };
    engine.cli(&[rm, &[c.name.as_str()]].concat());
    assert!(
        engine
            .try_cli(&["inspect", "--type", "container", &c.name])
            .is_err(),
        "{} is gone",
        c.name
    );
    assert_init_killed(&mut collector, &mut kmsg, &engine, &c, &running);
    verdict(
        &engine,
        "removed_right_after_the_kill",
        None,
        "oom_kill init complete, container_exit oom_kill 137",
    );
}

/// `stop -t 1` of a container whose PID 1 ignores SIGTERM: runc sends the
/// SIGKILL a second later; a signal kill, not an OOM kill.
pub fn stop_timeout_is_a_signal_kill(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let c = engine.run("stop", &[], &[WORKLOAD, "idle", "--ignore-term"]);
    let running = engine.inspect(&c.name);
    c.release();
    wait_until_ignoring_term(c.pid);
    engine.cli(&["stop", "-t", "1", &c.name]);
    assert_eq!(engine.wait(&c), 137);
    let state = engine.inspect(&c.name);
    assert_inspect(&state, &c, 137);
    let kill = collector.signal_kill_of(c.pid, KILL_TIMEOUT);
    assert_eq!(kill["sender"]["comm"], "runc", "{kill}");
    assert_eq!(kill["sender"]["kind"], "container_runtime", "{kill}");
    assert_eq!(kill["target"]["container_init"], true, "{kill}");
    assert_eq!(kill["container_survives"], false, "{kill}");
    assert_eq!(
        kill["target"]["cgroup"]["path"],
        engine.cgroup_path(&c.id),
        "{kill}"
    );
    assert_container(&kill, &engine, &c, &running);
    let ms = kill["after_sigterm"]["ms_before"]
        .as_f64()
        .expect("ms_before");
    assert!((900.0..30_000.0).contains(&ms), "{ms} ms: {kill}");
    assert_exit_137(&kill);
    let exit = collector.container_exit_of(c.pid, KILL_TIMEOUT);
    assert_exit(&exit, &engine, &c, &running, 137);
    assert_eq!(exit["cause"], "signal_kill", "{exit}");
    assert_eq!(exit["cause_seq"], kill["seq"], "{exit}");
    assert_eq!(exit["sender"]["comm"], "runc", "{exit}");
    assert_eq!(exit["other_oom_kills"]["count"], 0, "{exit}");
    assert_eq!(collector.kills().count(), 0, "no OOM kill anywhere");
    verdict(
        &engine,
        "stop_timeout_is_a_signal_kill",
        Some(&state),
        "signal_kill from runc, container_exit signal_kill 137",
    );
}

/// `--pid=host`: the container's main process is OOM-killed without a pid
/// namespace of its own; its cgroup then empty, the container has ended.
pub fn host_pid_main_killed(env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let mut collector = collector(env, &engine);
    let mut kmsg = Kmsg::open();
    let c = engine.run("hostpid", &["--pid=host"], &[WORKLOAD, "alloc"]);
    let running = engine.inspect(&c.name);
    c.release();
    assert_eq!(engine.wait(&c), 137);
    let state = engine.inspect(&c.name);
    assert_inspect(&state, &c, 137);
    let cgroup = engine.cgroup_path(&c.id);
    let kernel = kmsg.killed(c.pid, KILL_TIMEOUT);
    assert_kernel_memcg(&kernel, &cgroup);
    let record = collector.kill_of(c.pid, KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_container(&record, &engine, &c, &running);
    let host_ns = &collector.start_record()["host"]["pid_ns"];
    assert!(host_ns.is_u64(), "{}", collector.start_record());
    assert_eq!(&record["victim"]["pid_ns"], host_ns, "{record}");
    assert_eq!(record["victim"]["ns_pid"], c.pid, "{record}");
    assert_eq!(record["victim"]["container_init"], false, "{record}");
    assert_eq!(record["container_survives"], false, "{record}");
    let exit = collector.container_exit_of(c.pid, KILL_TIMEOUT);
    assert_eq!(exit["cause"], "oom_kill", "{exit}");
    assert_eq!(exit["cause_seq"], record["seq"], "{exit}");
    assert_eq!(exit["container"]["id"], c.id.as_str(), "{exit}");
    assert_eq!(exit["exit"]["code"], 137, "{exit}");
    verdict(
        &engine,
        "host_pid_main_killed",
        Some(&state),
        "oom_kill (host pid ns), container_exit oom_kill 137",
    );
}

/// A run abandoned with its daemon and a container up (as by a killed test
/// process): the next start leaves no old daemon, container process,
/// cgroup or container.
pub fn interrupted_run_is_swept(_env: &Env, kind: Kind) {
    let mut engine = Engine::start(kind);
    let c = engine.run("abandoned", &[], &["sleep", "1000"]);
    c.release();
    let daemon = engine.dockerd_pid();
    let mut helpers = sweep::processes_naming(&[engine.dirs.run.as_path()]);
    helpers.retain(|&p| Some(p as u32) != daemon);
    assert!(
        !sweep::container_cgroups(&c.id).is_empty(),
        "cgroups of {}",
        c.id
    );
    engine.abandon();
    let engine = Engine::start(kind);
    if let Some(pid) = daemon {
        // Our own child: reap it (sweep waited for it to be a zombie).
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    }
    for pid in daemon.into_iter().chain(helpers.iter().map(|&p| p as u32)) {
        assert!(!sweep::alive(pid as i32), "old process {pid} swept");
    }
    assert!(
        !sweep::alive(c.pid as i32),
        "container process {} swept",
        c.pid
    );
    assert!(
        sweep::container_cgroups(&c.id).is_empty(),
        "cgroups left: {:?}",
        sweep::container_cgroups(&c.id)
    );
    assert!(
        engine
            .try_cli(&["inspect", "--type", "container", &c.name])
            .is_err(),
        "{} removed",
        c.name
    );
    assert!(
        !engine.state_ids().contains(&c.id),
        "{} out of the state",
        c.id
    );
    verdict(&engine, "interrupted_run_is_swept", None, "-");
}
