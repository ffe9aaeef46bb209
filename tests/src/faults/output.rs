//! The output misbehaving: a stdout whose reader stops, a disk that fills
//! up, a log file rotated under the collector, stdout closed at start. Each
//! runs the real binary against the real thing: a pipe to a `cat` that is
//! stopped with SIGSTOP, a tmpfs of a few KiB in a private mount namespace,
//! real signals.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::storms::run_storm;
use crate::{
    cgroup::MemCgroup,
    collector::Env,
    contract::assert_record,
    scenarios::{Workload, assert_sigkilled},
    storm::Shape,
};

/// The collector's own limits (oomtrace/src/cli/run.rs): how long the output
/// may stay blocked at shutdown, and the exit grace before it.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("oomtrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every line of `text` is a whole record that keeps the contract, and the
/// text ends with a newline (no half line).
fn whole_records(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a half line at the end: {text:?}"
    );
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {line}"));
            assert_record(line, &value);
            value
        })
        .collect()
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the collector did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_file_line(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never showed {needle}", path.display());
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid as i32, signal) };
}

/// `oomtrace run | cat > FILE`, with `cat` stopped (SIGSTOP) through a
/// storm: the pipe (64 KiB) and then the collector's queue fill up. SIGTERM
/// then stops the collector within its flush deadline although its writes
/// block, and stderr says how many records were not written (`stop` among
/// them). Once `cat` goes on, what reached the file is whole records.
pub fn sigterm_with_blocked_output_stops_in_bounded_time(env: &Env) {
    let scratch = Scratch::new("blocked");
    let out = scratch.0.join("out.ndjson");
    let err = scratch.0.join("stderr");
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(File::create(&out).expect("out file"))
        .spawn()
        .expect("spawn cat");
    let mut collector = Command::new(&env.oomtrace)
        .arg("run")
        .args(&env.collector_args)
        .stdout(cat.stdin.take().expect("cat's stdin"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn oomtrace");
    wait_for_file_line(&out, "\"type\":\"start\"");
    signal(cat.id(), libc::SIGSTOP);
    let outcome = run_storm(env, Shape::Allocator);
    signal(collector.id(), libc::SIGTERM);
    let limit = SHUTDOWN_GRACE + FLUSH_DEADLINE + Duration::from_secs(10);
    let (status, took) = wait_for_exit(&mut collector, limit);
    signal(cat.id(), libc::SIGCONT);
    let _ = cat.wait();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    eprintln!("blocked output: stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let unwritten: usize = stderr
        .split("were not written")
        .next()
        .and_then(|before| before.rsplit(": ").next())
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("stderr does not say what was not written: {stderr}"));
    assert!(unwritten >= 1, "{stderr}");
    let records = whole_records(&std::fs::read_to_string(&out).expect("out"));
    assert!(
        records.iter().all(|r| r["type"] != "stop"),
        "`stop` cannot have passed a blocked pipe"
    );
    let kills = records.iter().filter(|r| r["type"] == "oom_kill").count() as u64;
    assert!(
        kills < outcome.kernel_kills(),
        "the pipe held all {kills} kills: the test did not block the output"
    );
}

/// Runs `oomtrace run -o DIR/out.ndjson` inside a private mount namespace
/// where DIR is a 64 KiB tmpfs, next to a filler file the test can remove
/// (through /proc/PID/root) to give the space back. When the collector
/// ends, the shell prints the file on stdout: the tmpfs goes away with the
/// namespace.
fn collector_on_tiny_tmpfs(env: &Env, dir: &Path, err: &Path) -> Child {
    let script = format!(
        "mount -t tmpfs -o size=64k oomtrace-test {dir} && \
         head -c 49152 /dev/zero > {dir}/filler && \
         {{ {bin} run {args} --exit-wait 200ms -o {dir}/out.ndjson; \
           echo \"exit $?\" >&2; cat {dir}/out.ndjson; }}",
        dir = dir.display(),
        bin = env.oomtrace.display(),
        args = env.collector_args.join(" "),
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(File::create(err).expect("stderr file"))
        .spawn()
        .expect("spawn unshare")
}

/// A disk that fills up: the collector writes to a 64 KiB tmpfs (a private
/// mount namespace, so nothing else sees it) that a filler file has nearly
/// filled, while 16 kills happen. A line that does not fit is cut off
/// again, never left half written; tracing goes on, each record that could
/// not be written is counted, and the error is said once. When the filler
/// is removed, the next kills are written again, and `stop` counts the
/// dropped ones: written + dropped = every kill.
pub fn full_disk_keeps_whole_lines_and_resumes(env: &Env) {
    const WHILE_FULL: usize = 16;
    const AFTER: usize = 2;
    let scratch = Scratch::new("fulldisk");
    let dir = scratch.0.join("mnt");
    std::fs::create_dir(&dir).expect("mount point");
    let err = scratch.0.join("stderr");
    let mut shell = collector_on_tiny_tmpfs(env, &dir, &err);
    // The collector's view of the tmpfs, through its mount namespace.
    let inside = PathBuf::from(format!("/proc/{}/root{}", shell.id(), dir.display()));
    let out = inside.join("out.ndjson");
    wait_for_file_line(&out, "\"type\":\"start\"");
    let start = whole_records(&std::fs::read_to_string(&out).expect("out"));
    let collector_pid = start[0]["collector"]["pid"].as_u64().expect("pid") as u32;
    let cg = MemCgroup::create("fulldisk", Some(24 << 20));
    let kill = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
                assert_sigkilled(victim.wait(), "the allocator");
                victim.pid()
            })
            .collect()
    };
    kill(WHILE_FULL);
    std::thread::sleep(Duration::from_millis(1000));
    let written = whole_records(&std::fs::read_to_string(&out).expect("out"));
    let while_full = written.iter().filter(|r| r["type"] == "oom_kill").count();
    assert!(
        while_full < WHILE_FULL,
        "the disk never filled: {while_full} kills written"
    );
    std::fs::remove_file(inside.join("filler")).expect("remove the filler");
    let after = kill(AFTER);
    std::thread::sleep(Duration::from_millis(1000));
    signal(collector_pid, libc::SIGTERM);
    let (status, _) = wait_for_exit(&mut shell, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.success() && stderr.contains("exit 0"),
        "{status:?}; stderr: {stderr}"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut shell.stdout.take().expect("stdout"), &mut text)
        .expect("the file, printed");
    let records = whole_records(&text);
    let kills: Vec<&Value> = records.iter().filter(|r| r["type"] == "oom_kill").collect();
    for pid in &after {
        assert!(
            kills.iter().any(|k| k["victim"]["pid"] == *pid),
            "kill of {pid}, after space came back, not written: {text}"
        );
    }
    let stop = records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    let dropped = stop["counters"]["records_dropped"]
        .as_u64()
        .expect("dropped") as usize;
    assert!(dropped > 0, "{stop}");
    assert_eq!(
        kills.len() + dropped,
        WHILE_FULL + AFTER,
        "every kill written or counted: {stop}"
    );
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "the error said once, its cause once: {stderr}"
    );
}

/// SIGHUP reopens `--output` (logrotate's `postrotate kill -HUP`): after the
/// file is moved away, the next records go to a new file at the path. Then
/// SIGUSR1, a signal whose default action would kill the collector, stops
/// it cleanly instead: `stop` is written, naming it.
pub fn sighup_reopens_and_other_signals_stop_cleanly(env: &Env) {
    let scratch = Scratch::new("rotate");
    let out = scratch.0.join("oom.ndjson");
    let rotated = scratch.0.join("oom.ndjson.1");
    let mut collector = Command::new(&env.oomtrace)
        .arg("run")
        .args(&env.collector_args)
        .args(["--exit-wait", "200ms", "-o"])
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn oomtrace");
    wait_for_file_line(&out, "\"type\":\"start\"");
    std::fs::rename(&out, &rotated).expect("rotate");
    signal(collector.id(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(out.exists(), "SIGHUP did not reopen {}", out.display());
    let cg = MemCgroup::create("rotate", Some(24 << 20));
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    wait_for_file_line(&out, "\"type\":\"oom_kill\"");
    signal(collector.id(), libc::SIGUSR1);
    let (status, _) = wait_for_exit(&mut collector, Duration::from_secs(20));
    assert!(status.success(), "a clean stop on SIGUSR1: {status:?}");
    let old = whole_records(&std::fs::read_to_string(&rotated).expect("rotated"));
    assert_eq!(
        old.len(),
        1,
        "only `start` went to the rotated file: {old:?}"
    );
    let new = whole_records(&std::fs::read_to_string(&out).expect("new file"));
    assert!(
        new.iter().any(|r| r["victim"]["pid"] == victim.pid()),
        "{new:?}"
    );
    let stop = new.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["reason"], "SIGUSR1", "{stop}");
}

/// `oomtrace run >&-`: Rust's runtime reopens a closed stdout on /dev/null,
/// so every record would vanish silently. The collector says so on stderr,
/// and still stops cleanly.
pub fn closed_stdout_at_start_is_said_loudly(env: &Env) {
    let mut command = Command::new(&env.oomtrace);
    command
        .arg("run")
        .args(&env.collector_args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    // SAFETY: close(2) between fork and exec, async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::close(1);
            Ok(())
        });
    }
    let mut collector = command.spawn().expect("spawn oomtrace");
    let mut stderr = BufReader::new(collector.stderr.take().expect("stderr"));
    let mut said = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said.contains("/dev/null") && Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            break;
        }
        said.push_str(&line);
    }
    assert!(
        said.contains("stdout is /dev/null") && said.contains("every record is discarded"),
        "no warning about the closed stdout: {said}"
    );
    signal(collector.id(), libc::SIGTERM);
    let (status, _) = wait_for_exit(&mut collector, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}
