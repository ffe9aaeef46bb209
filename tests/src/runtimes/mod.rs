//! OOM kills in containers of real runtimes: Docker 20.10 (a private
//! dockerd), Podman 4.3 and containerd 1.6 (`ctr`, against the containerd
//! our dockerd starts). Each scenario is written once for an [`Engine`] and
//! run for Docker and for Podman ([`for_each_runtime!`]); each record is
//! checked field by field against the kernel log and the runtime's own
//! `inspect`.
//!
//! The runtime's own verdict (`State.OOMKilled`) is recorded, never
//! asserted, to `target/oomtrace-runtimes/verdicts.ndjson`: Podman 4.3 does
//! not set it here, Docker's is cumulative, and a runtime that fixes that
//! must not fail these tests.

use std::{io::Write, time::Duration};

use serde_json::{Value, json};

pub use self::engine::{Container, Engine, Kind};
use crate::{
    collector::{Collector, Env},
    kmsg::KilledProcess,
};

pub mod containerd;
pub mod engine;
pub(crate) mod image;
pub mod scenarios;
pub mod sweep;

pub const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Instantiates each scenario for Docker and for Podman:
/// `scenario: docker_test_name, podman_test_name;`, each test calling the
/// test crate's own `env()` for the binaries under test.
#[macro_export]
macro_rules! for_each_runtime {
    ($($scenario:ident : $docker:ident, $podman:ident);* $(;)?) => {
        $(
            #[test]
            fn $docker() {
                oomtrace_tests::runtimes::scenarios::$scenario(
                    &env(),
                    oomtrace_tests::runtimes::Kind::Docker,
                );
            }
            #[test]
            fn $podman() {
                oomtrace_tests::runtimes::scenarios::$scenario(
                    &env(),
                    oomtrace_tests::runtimes::Kind::Podman,
                );
            }
        )*
    };
}

/// oomtrace, started before the container: with the runtimes' state dirs,
/// so that it can name containers and their images.
pub fn collector(env: &Env, engine: &Engine) -> Collector {
    let d = &engine.dirs;
    let dirs = [
        ("--docker-root", d.docker_root()),
        ("--containerd-root", d.containerd_state()),
        ("--podman-root", d.podman_root()),
    ];
    let mut args: Vec<String> = Vec::new();
    if NAMES {
        for (flag, dir) in dirs {
            args.push(flag.to_string());
            args.push(dir.to_str().expect("utf-8").to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Collector::start(env, &args)
}

/// Whether this oomtrace names containers (`container.name`, `.image`,
/// from the runtimes' state: `--docker-root` and the like).
pub const NAMES: bool = true;

/// What every record about container `c` of `engine` carries: its full
/// id, the runtime, and (with [`NAMES`]) its name and image.
pub fn assert_container(record: &Value, engine: &Engine, c: &Container, state: &Value) {
    let container = &record["container"];
    assert_eq!(container["id"], c.id.as_str(), "container.id: {record}");
    assert_eq!(
        container["runtime"],
        engine.kind.name(),
        "container.runtime: {record}"
    );
    if NAMES {
        let name = state["Name"].as_str().expect("Name");
        assert_eq!(
            container["name"],
            name.trim_start_matches('/'),
            "container.name: {record}"
        );
        assert_eq!(
            container["image"],
            engine.image_of(state).as_str(),
            "container.image: {record}"
        );
    }
}

/// The runtime's `inspect` of a container that has exited: its id, name
/// and exit code are what the test made and saw.
pub fn assert_inspect(state: &Value, c: &Container, code: i64) {
    assert_eq!(state["Id"], c.id.as_str(), "Id: {state}");
    assert_eq!(
        state["Name"].as_str().map(|n| n.trim_start_matches('/')),
        Some(c.name.as_str()),
        "Name: {state}"
    );
    assert_eq!(state["State"]["ExitCode"], code, "State.ExitCode: {state}");
}

/// Where the kernel logged its `oom-kill:` line, it names the container's
/// cgroup as the victim's (`task_memcg`) and the limit that fired
/// (`oom_memcg`). oom_kill_process() prints that line only as its
/// ratelimit allows (10 per 5 s, `oom_rs`), while `Killed process` is
/// always printed: after the suite's earlier kills it can be missing. The
/// record's own cgroup path is checked against the runtime's either way.
pub fn assert_kernel_memcg(kernel: &KilledProcess, cgroup: &str) {
    let Some(context) = kernel.context.as_ref() else {
        eprintln!(
            "runtimes: no oom-kill: line for {} (the kernel's ratelimit); \
             task_memcg not compared",
            kernel.pid
        );
        return;
    };
    assert_eq!(context.task_memcg.as_deref(), Some(cgroup), "{kernel:?}");
    assert_eq!(context.oom_memcg.as_deref(), Some(cgroup), "{kernel:?}");
}

/// Appends the runtime's own verdict on a case to
/// `target/oomtrace-runtimes/verdicts.ndjson`, and prints it.
pub fn verdict(engine: &Engine, case: &str, state: Option<&Value>, oomtrace: &str) {
    let line = json!({
        "case": case,
        "runtime": engine.kind.name(),
        "exit_code": state.map(|s| s["State"]["ExitCode"].clone()),
        "oom_killed": state.map(|s| s["State"]["OOMKilled"].clone()),
        "oomtrace": oomtrace,
    });
    println!("verdict: {line}");
    let path = engine.dirs.data.join("verdicts.ndjson");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(file, "{line}");
    }
}
