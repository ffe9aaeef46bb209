//! deploy/oomtrace.service. systemd is not PID 1 on this project's
//! machines, so the unit cannot be started here; what can be checked is:
//! - `systemd-analyze verify` (works offline) and `security --offline`;
//! - its capability bounding set is enough: the collector, run with exactly
//!   that bounding set (`setpriv`), no new privileges and the unit's nice
//!   value, records a kill with the kernel log read;
//! - its system call filter is enough: every system call that run made
//!   (strace) is in the filter as systemd expands it.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{deploy_file, scratch_dir};
use crate::{
    cgroup::MemCgroup,
    collector::Env,
    kmsg::Kmsg,
    runtimes::engine::run_command,
    scenarios::{assert_matches_kernel, assert_sigkilled},
    workload::Workload,
};

const SHIPPED_BIN: &str = "/usr/local/bin/oomtrace";
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// The values of `KEY=` in the unit (every line, in order).
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// `systemd-analyze verify FILE`: its output (stdout and stderr), and
/// whether it succeeded.
fn verify(file: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze (Debian's systemd package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every syscall in each of systemd's groups (`@system-service`), from
/// `systemd-analyze syscall-filter`, nested groups expanded.
fn syscall_groups() -> HashMap<String, Vec<String>> {
    let text = run_command(Command::new("systemd-analyze").arg("syscall-filter"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('@') {
            current = Some(format!("@{}", name.trim()));
            continue;
        }
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if let Some(group) = &current {
            groups
                .entry(group.clone())
                .or_default()
                .push(entry.to_string());
        }
    }
    groups
}

fn expand(entry: &str, groups: &HashMap<String, Vec<String>>, into: &mut HashSet<String>) {
    if entry.starts_with('@') {
        for e in groups
            .get(entry)
            .unwrap_or_else(|| panic!("unknown group {entry}"))
        {
            expand(e, groups, into);
        }
    } else {
        into.insert(entry.to_string());
    }
}

/// The system calls an strace log names.
fn traced_syscalls(log: &str) -> HashSet<String> {
    log.lines()
        .filter_map(|line| {
            // "PID name(args...) = ret" or "PID <... name resumed>..."
            let rest = line.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && rest[name.len()..].starts_with(['(', ' '])).then_some(name)
        })
        .collect()
}

fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if text.contains(needle) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle} in {} within {timeout:?}: {records:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unit passes `systemd-analyze verify` with nothing to say (a copy
/// with one key misspelled does not: verify really reads it), and
/// `security --offline` rates its exposure 3.0 or better. Then the
/// collector runs as the unit would run it (its ExecStart arguments, its
/// CapabilityBoundingSet through `setpriv`, NoNewPrivileges, its Nice),
/// under strace: it records a kill, with the kernel log read (CAP_SYSLOG),
/// reopens its output on the unit's ExecReload signal, stops on SIGTERM;
/// and every system call it made is in the unit's SystemCallFilter.
pub fn systemd_unit_verifies_and_its_filters_suffice(env: &Env) {
    let shipped = deploy_file("oomtrace.service");
    let unit = std::fs::read_to_string(&shipped).expect("oomtrace.service");
    let dir = scratch_dir().join("systemd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    // verify checks that ExecStart's binary exists: point it at ours.
    let bin = env.oomtrace.canonicalize().expect("oomtrace binary");
    let here = dir.join("oomtrace.service");
    std::fs::write(
        &here,
        unit.replace(SHIPPED_BIN, bin.to_str().expect("utf-8")),
    )
    .expect("w");
    let (ok, said) = verify(&here);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let misspelled = dir.join("misspelled.service");
    std::fs::write(
        &misspelled,
        std::fs::read_to_string(&here)
            .expect("the unit")
            .replace("ProtectSystem=", "ProtectSystm="),
    )
    .expect("w");
    let (_, said) = verify(&misspelled);
    assert!(
        said.contains("ProtectSystm"),
        "a misspelled key is named: {said}"
    );
    let security = run_command(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=30"])
            .arg(&here),
    )
    .unwrap_or_else(|e| panic!("exposure above 3.0? {e}"));
    eprintln!(
        "systemd-analyze security: {}",
        security.lines().last().unwrap_or_default()
    );

    // The collector as the unit runs it.
    let exec = directive(&unit, "ExecStart");
    let exec: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(exec[0], SHIPPED_BIN);
    let output = dir.join("oomtrace.ndjson");
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            a.replace(
                "/var/log/oomtrace/oomtrace.ndjson",
                output.to_str().expect("utf-8"),
            )
        })
        .collect();
    assert!(args.contains(&output.display().to_string()), "{args:?}");
    let bounding: Vec<String> = directive(&unit, "CapabilityBoundingSet")[0]
        .split_whitespace()
        .map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()
            )
        })
        .collect();
    assert_eq!(directive(&unit, "NoNewPrivileges"), ["yes"]);
    let nice = directive(&unit, "Nice")[0].clone();
    let trace = dir.join("strace.log");
    let mut collector = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args([
            "nice",
            "-n",
            &nice,
            "setpriv",
            "--no-new-privs",
            "--inh-caps=-all",
        ])
        .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
        .arg(&bin)
        .args(&args)
        .args(["--exit-wait", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr"))
        .spawn()
        .expect("spawn strace (Debian's strace package)");
    let records = wait_for_line(&output, "\"type\":\"start\"", Duration::from_secs(60));
    let start = &records[0];
    let notes: Vec<&str> = start["notes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    eprintln!("start notes: {notes:?}");
    // -1000 needs CAP_SYS_RESOURCE, which this machine does not have to
    // give (systemd sets OOMScoreAdjust= itself); nothing else may fail.
    let unexpected: Vec<&&str> = notes
        .iter()
        .filter(|n| !n.contains("oom_score_adj") && !n.contains("kubelet pod logs"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}: {start}");
    assert_eq!(
        start["collector"]["kernel_log"]["read"], true,
        "/dev/kmsg read with the unit's CAP_SYSLOG: {start}"
    );

    let cg = MemCgroup::create("deploy-unit", Some(24 << 20));
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let needle = format!("\"pid\":{}", victim.pid());
    let records = wait_for_line(&output, &needle, KILL_TIMEOUT);
    let kill = records
        .iter()
        .find(|r| r["type"] == "oom_kill" && r["victim"]["pid"] == victim.pid())
        .expect("the kill");
    assert_matches_kernel(kill, &kernel);
    eprintln!("oom.kernel_log: {}", kill["oom"]["kernel_log"]);

    // ExecReload: SIGHUP reopens the output (after a move).
    let pid = collector_pid(&trace, &bin);
    std::fs::rename(&output, dir.join("oomtrace.ndjson.1")).expect("move");
    // SAFETY: kill(2) on the collector this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !output.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(output.exists(), "SIGHUP reopened the output");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = collector.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    wait_for_line(&output, "\"type\":\"stop\"", Duration::from_secs(5));

    let mut allowed = HashSet::new();
    let groups = syscall_groups();
    for entry in directive(&unit, "SystemCallFilter")[0].split_whitespace() {
        expand(entry, &groups, &mut allowed);
    }
    let log = std::fs::read_to_string(&trace).expect("strace log");
    // Only the collector's own calls: from its execve on (nice and setpriv
    // are systemd's part).
    let from_exec = log
        .find(&format!("execve(\"{}\"", bin.display()))
        .expect("the collector's execve");
    let used = traced_syscalls(&log[from_exec..]);
    let mut refused: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    refused.sort();
    eprintln!("the collector made {} distinct system calls", used.len());
    // Raw tracepoints attach through bpf(2) alone; perf_event_open is the
    // classic tracepoint's (the fallback without BTF), not traced here.
    assert!(
        used.contains("bpf"),
        "the trace holds the collector's calls: {used:?}"
    );
    assert!(
        refused.is_empty(),
        "system calls the unit's SystemCallFilter refuses: {refused:?}"
    );
}

/// The collector's pid: the process strace saw exec it.
fn collector_pid(trace: &Path, bin: &Path) -> i32 {
    let log = std::fs::read_to_string(trace).expect("strace log");
    let line = log
        .lines()
        .find(|l| l.contains(&format!("execve(\"{}\"", bin.display())))
        .expect("the collector's execve");
    line.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}
