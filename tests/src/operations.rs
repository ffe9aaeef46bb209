//! The collector's life cycle and its other modes: privileges, signals, a
//! closed stdout, the classic tracepoint and no-BTF modes, text output.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    messages::{assert_promises_kept, promised_fields},
    scenarios::{
        LIMIT, Workload, assert_exit_137, assert_identity, assert_oom_context, assert_sigkilled,
        comm_bytes,
    },
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Without the capabilities it needs, `run` says which are missing and exits 1.
pub fn no_privileges_is_a_clear_error(env: &Env) {
    let oomtrace = env.oomtrace.to_str().expect("utf-8 path");
    for drop_privileges in [
        // uid 0 with every capability dropped.
        vec!["--bounding-set=-all", "--inh-caps=-all", "--"],
        // An ordinary user.
        vec!["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
    ] {
        let output = Command::new("setpriv")
            .args(&drop_privileges)
            .args([oomtrace, "run"])
            .output()
            .expect("run setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "exit 1 under {drop_privileges:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "no records without privileges");
        assert!(
            stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
            "{stderr}"
        );
        assert!(stderr.contains("root"), "says how to fix it: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// SIGTERM and SIGINT end the run with a `stop` record and exit status 0.
/// Every record of a run carries the host's name, the boot's id and the
/// run's id, and each start has a run id of its own.
pub fn signals_write_stop(env: &Env) {
    let mut run_ids = Vec::new();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut collector = Collector::start(env, &[]);
        let status = collector.stop_with(signal);
        assert!(status.success(), "exit 0 on {name}: {status:?}");
        let last = collector.records.last().expect("records");
        assert_eq!(last["type"], "stop", "{last}");
        assert_eq!(last["reason"], name, "{last}");
        assert_eq!(last["counters"]["kills"], 0, "{last}");
        assert_identity(&collector.records);
        run_ids.push(collector.records[0]["run_id"].clone());
    }
    assert_ne!(run_ids[0], run_ids[1], "a new run_id at each start");
}

/// A reader that goes away (`oomtrace run | head -1`) ends the collector
/// quietly, with status 0 and no panic, at its next write.
pub fn closed_stdout_is_quiet(env: &Env) {
    let cg = MemCgroup::create("epipe", Some(LIMIT));
    let stderr_path =
        std::env::temp_dir().join(format!("oomtrace-epipe-{}.stderr", std::process::id()));
    let mut child = Command::new(&env.oomtrace)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn oomtrace");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read start");
    assert!(first.contains("\"start\""), "{first}");
    drop(reader); // the pipe's only reader is gone
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("oomtrace kept running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    assert!(status.success(), "quiet exit: {status:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The classic tracepoint (`--victim-probe tracepoint`) and `--no-btf`: the
/// fields the tracepoint's format carries match dmesg; what it cannot know
/// (tgid, cgroup, pid namespace, and without BTF the exit code) is null;
/// and every field `oomtrace check` promises for the mode is there.
pub fn classic_tracepoint_modes(env: &Env) {
    for (args, btf) in [
        (&["--victim-probe", "tracepoint"][..], true),
        (&["--no-btf"][..], false),
    ] {
        let promised = promised_fields(env, args);
        let cg = MemCgroup::create("classic", Some(LIMIT));
        let mut collector = Collector::start(env, args);
        let start = collector.start_record().clone();
        assert_eq!(start["probes"][0]["mode"], "tracepoint", "{start}");
        let mut kmsg = Kmsg::open();
        let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--adj", "700"]);
        assert_sigkilled(victim.wait(), "the allocator");
        let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
        let pid = victim.pid();
        let record = collector.kill_matching(|r| r["victim"]["tid"] == pid, KILL_TIMEOUT);
        let v = &record["victim"];
        assert_eq!(record["source"], "tracepoint");
        assert_promises_kept(&record, &promised, &format!("{args:?}"));
        let extended = tracepoint_is_extended();
        if extended {
            let kb = |n: u64| Value::from(n * 1024);
            assert_eq!(v["oom_score_adj"], kernel.oom_score_adj, "{record}");
            assert_eq!(v["uid"], kernel.uid);
            assert_eq!(v["total_vm_bytes"], kb(kernel.total_vm_kb));
            assert_eq!(v["rss"]["anon_bytes"], kb(kernel.anon_rss_kb));
            assert_eq!(v["rss"]["file_bytes"], kb(kernel.file_rss_kb));
            assert_eq!(v["rss"]["shmem_bytes"], kb(kernel.shmem_rss_kb));
            assert_eq!(v["pgtables_bytes"], kb(kernel.pgtables_kb));
            assert_eq!(comm_bytes(v), kernel.comm);
        } else {
            assert!(
                v["comm"].is_null() && v["rss"]["anon_bytes"].is_null(),
                "{record}"
            );
        }
        for unknowable in ["pid", "ns_pid", "container_init"] {
            assert!(
                v[unknowable].is_null(),
                "{unknowable} must be null here: {record}"
            );
        }
        assert!(
            v["cgroup"]["path"].is_null() && v["cgroup"]["id"].is_null(),
            "{record}"
        );
        assert!(record["memcg"].is_null(), "{record}");
        assert_eq!(
            record["trigger"]["pid"], pid,
            "the trigger is still known: {record}"
        );
        assert_oom_context(&record, &start, &kernel, &cg.path, LIMIT);
        if btf {
            assert_exit_137(&record);
        } else {
            // Exactly what the tracepoint itself and the exit hook's map
            // lookup can know; every other field must be null.
            let mut expected: Vec<&str> = vec![
                "type",
                "schema",
                "hostname",
                "boot_id",
                "run_id",
                "seq",
                "time",
                "boot_ns",
                "source",
                "victim.tid",
                "trigger.pid",
                "trigger.tid",
                "trigger.comm",
                "exit.observed",
                "exit.delay_ms",
                // What the kernel log said, and why the fired memcg is null.
                "oom.kernel_log",
                "oom.memcg_unknown",
            ];
            if extended {
                expected.extend([
                    "victim.comm",
                    "victim.uid",
                    "victim.oom_score_adj",
                    "victim.total_vm_bytes",
                    "victim.pgtables_bytes",
                    "victim.rss.anon_bytes",
                    "victim.rss.file_bytes",
                    "victim.rss.shmem_bytes",
                ]);
            }
            let mut known = non_null_leaves(&record, "");
            known.sort();
            expected.sort();
            assert_eq!(
                known, expected,
                "the --no-btf record's known fields: {record}"
            );
            // Without BTF the exit hook cannot read task_struct::exit_code.
            assert_eq!(record["exit"]["observed"], true, "{record}");
            assert!(record["exit"]["code"].is_null(), "{record}");
        }
    }
}

/// Paths (`a.b.c`) of the leaves of `value` that are not null.
fn non_null_leaves(value: &Value, prefix: &str) -> Vec<String> {
    match value {
        Value::Null => vec![],
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                non_null_leaves(v, &path)
            })
            .collect(),
        _ => vec![prefix.to_string()],
    }
}

/// Whether this kernel's oom:mark_victim has the 6.9 fields.
fn tracepoint_is_extended() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::fs::read_to_string(format!("{t}/events/oom/mark_victim/format"))
                .is_ok_and(|f| f.contains("anon_rss"))
        })
}

/// `--format text --output FILE`: readable lines, appended to the file.
pub fn text_output_to_file(env: &Env) {
    let cg = MemCgroup::create("text", Some(LIMIT));
    let file = std::env::temp_dir().join(format!("oomtrace-text-{}.log", std::process::id()));
    std::fs::write(&file, "existing line\n").expect("seed file");
    let mut child = Command::new(&env.oomtrace)
        .args(["run", "--format", "text", "--exit-wait", "1s", "--output"])
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("tracing on");
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--adj", "400"]);
    assert_sigkilled(victim.wait(), "the allocator");
    let text = wait_for(&format!("OOM kill: pid {} ", victim.pid()));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
    let text = std::fs::read_to_string(&file).unwrap_or(text);
    let _ = std::fs::remove_file(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "existing line", "appended, not truncated");
    let kill = lines
        .iter()
        .find(|l| l.contains("OOM kill:"))
        .expect("kill line");
    assert!(
        kill.contains("adj 400") && kill.contains("exit 137"),
        "{kill}"
    );
    assert!(kill.contains(&cg.path), "{kill}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("stopped (SIGTERM)")),
        "{text}"
    );
}

/// `check` shows the plan and exits 0 here; a missing --btf file is a clear
/// error with exit status 1.
pub fn check_and_bad_btf(env: &Env) {
    let output = Command::new(&env.oomtrace)
        .arg("check")
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("mark_victim") && text.contains("verdict: OOM kills will be traced"),
        "{text}"
    );
    let json = Command::new(&env.oomtrace)
        .args(["check", "--json"])
        .output()
        .expect("check --json");
    let start: Value = serde_json::from_slice(&json.stdout).expect("check --json is JSON");
    assert_eq!(start["probes"].as_array().map(Vec::len), Some(4), "{start}");

    let output = Command::new(&env.oomtrace)
        .args(["run", "--btf", "/nonexistent/vmlinux"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/vmlinux") && stderr.contains("--no-btf"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// The memory a collector needs, as the README's requirements state it:
/// started inside a memory cgroup limited to that much, it attaches, traces
/// a kill elsewhere, and stops cleanly, never OOM-killed itself; the
/// cgroup's own peak stays under the limit. (Below its start-up peak, about
/// 24 MiB while aya parses the kernel's BTF, it would be OOM-killed while
/// starting: the README says so.)
pub fn starts_within_the_documented_memory(env: &Env) {
    /// README "Requirements": "a memory limit of at least 32 MiB".
    const DOCUMENTED: u64 = 32 << 20;
    let home = MemCgroup::create("collector-home", Some(DOCUMENTED));
    let victims = MemCgroup::create("collector-victims", Some(LIMIT));
    let mut collector = Command::new(&env.workload)
        .args(["exec-in", home.dir_str()])
        .arg(&env.oomtrace)
        .arg("run")
        .args(&env.collector_args)
        .args(["--exit-wait", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn oomtrace in its cgroup");
    let mut lines = BufReader::new(collector.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        let line = lines
            .next()
            .expect("the collector ended early")
            .expect("read line");
        serde_json::from_str(&line).expect("json")
    };
    assert_eq!(
        next()["type"],
        "start",
        "attached inside {DOCUMENTED} bytes"
    );
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", victims.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    let kill = next();
    assert_eq!(kill["victim"]["pid"], victim.pid(), "{kill}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let stop = std::iter::repeat_with(&mut next)
        .find(|r| r["type"] == "stop")
        .expect("stop");
    assert!(collector.wait().expect("wait").success(), "{stop}");
    assert_eq!(
        home.oom_kills(),
        0,
        "the collector was OOM-killed in its own cgroup"
    );
    let peak = home.peak();
    eprintln!(
        "collector's cgroup peak: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= DOCUMENTED,
        "peak {peak} over the documented {DOCUMENTED}"
    );
}
