//! Runs `oomtrace run` as a child process and reads its records.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where the binaries under test are.
#[derive(Clone, Debug)]
pub struct Env {
    /// The collector, `target/release/oomtrace`.
    pub oomtrace: PathBuf,
    /// The workload, `oomtrace-workload`.
    pub workload: PathBuf,
    /// Flags every `oomtrace run` of a scenario gets first (an attach mode,
    /// in the VM matrix).
    pub collector_args: Vec<String>,
}

impl Env {
    /// For `cargo test`: the collector from OOMTRACE_BIN (set by `cargo xtask
    /// test`), else the workspace's release build.
    pub fn from_cargo(workload: &str) -> Self {
        let oomtrace = std::env::var_os("OOMTRACE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/oomtrace")
            });
        Self::new(oomtrace, PathBuf::from(workload))
    }

    pub fn new(oomtrace: PathBuf, workload: PathBuf) -> Self {
        assert!(
            oomtrace.exists(),
            "{} does not exist: run `cargo xtask test` (it builds it) or set OOMTRACE_BIN",
            oomtrace.display()
        );
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "these tests cause real OOM kills in cgroups they create and need root"
        );
        Self {
            oomtrace,
            workload,
            collector_args: Vec::new(),
        }
    }
}

pub struct Collector {
    child: Child,
    /// The process between the collector and this harness, if any (see
    /// [`Collector::start_behind_reader`]).
    reader: Option<Child>,
    lines: Receiver<String>,
    /// Every record read so far, in order.
    pub records: Vec<Value>,
    /// The bytes of those records, newlines included.
    pub bytes: usize,
    stderr: PathBuf,
}

impl Collector {
    /// Starts `oomtrace run ARGS`, its stdout a pipe this harness reads,
    /// and waits for its `start` record.
    pub fn start(env: &Env, args: &[&str]) -> Self {
        Self::spawn(env, args, false)
    }

    /// Like [`Collector::start`], but the collector's stdout is a pipe to a
    /// separate reader process (`cat`), whose own stdout this harness reads:
    /// a reader that can be stopped (SIGSTOP, [`Collector::reader_pid`]),
    /// as a log shipper stalls, leaving the collector's pipe to fill up.
    pub fn start_behind_reader(env: &Env, args: &[&str]) -> Self {
        Self::spawn(env, args, true)
    }

    fn spawn(env: &Env, args: &[&str], behind_reader: bool) -> Self {
        let stderr = std::env::temp_dir().join(format!(
            "oomtrace-test-{}-{}.stderr",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_suffix()
        ));
        let mut child = Command::new(&env.oomtrace)
            .arg("run")
            .args(&env.collector_args)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env.oomtrace.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (lines, reader) = if behind_reader {
            // The reader gets the pipe's read end; this process keeps no
            // copy of it, so the collector's pipe is the reader's alone.
            let spawned = Command::new("cat")
                .stdin(Stdio::from(stdout))
                .stdout(Stdio::piped())
                .spawn();
            let mut reader = match spawned {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("spawn the reader (cat): {e}");
                }
            };
            let out = reader.stdout.take().expect("reader's stdout");
            (spawn_reader(out), Some(reader))
        } else {
            (spawn_reader(stdout), None)
        };
        let mut collector = Self {
            child,
            reader,
            lines,
            records: Vec::new(),
            bytes: 0,
            stderr,
        };
        let start = collector.next_record(Duration::from_secs(30));
        assert_eq!(start["type"], "start", "first record: {start}");
        collector
    }

    /// The collector's process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The reader process's id, for a collector started behind one.
    pub fn reader_pid(&self) -> Option<u32> {
        self.reader.as_ref().map(Child::id)
    }

    pub fn start_record(&self) -> &Value {
        &self.records[0]
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Parses one line (one whole JSON object of schema 1) and keeps it.
    fn push_line(&mut self, line: String) -> Value {
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one whole JSON object per line ({e}): {line:?}"));
        assert_eq!(value["schema"], 1, "{line}");
        crate::contract::assert_record(&line, &value);
        self.bytes += line.len() + 1;
        self.records.push(value.clone());
        value
    }

    fn next_record(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => self.push_line(line),
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no record within {timeout:?}; oomtrace stderr:\n{}",
                    self.stderr_text()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("oomtrace exited early; stderr:\n{}", self.stderr_text())
            }
        }
    }

    /// Waits for the `oom_kill` record whose victim is `pid`.
    pub fn kill_of(&mut self, pid: u32, timeout: Duration) -> Value {
        self.kill_matching(|r| r["victim"]["pid"] == pid, timeout)
    }

    /// Waits for the first `oom_kill` record that satisfies `pred`.
    pub fn kill_matching(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.record_matching("oom_kill", pred, timeout)
    }

    /// Waits for the `signal_kill` record whose target is process `pid`.
    pub fn signal_kill_of(&mut self, pid: u32, timeout: Duration) -> Value {
        self.record_matching("signal_kill", |r| r["target"]["pid"] == pid, timeout)
    }

    /// Waits for the `container_exit` record of the PID 1 whose host pid is
    /// `pid`.
    pub fn container_exit_of(&mut self, pid: u32, timeout: Duration) -> Value {
        self.record_matching("container_exit", |r| r["pid"] == pid, timeout)
    }

    /// The records of type `kind` read so far.
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> {
        self.records.iter().filter(move |r| r["type"] == kind)
    }

    /// Waits for the first record of type `kind` that satisfies `pred`.
    pub fn record_matching(
        &mut self,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let matches = |r: &Value| r["type"] == kind && pred(r);
        if let Some(found) = self.records.iter().find(|r| matches(r)) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching {kind} record within {timeout:?}: {:?}",
                self.records
            );
            let record = self.next_record(left);
            if matches(&record) {
                return record;
            }
        }
    }

    /// Reads records until `done(every record so far)` holds; false if it
    /// does not within `timeout`. Panics if the collector exits first.
    pub fn wait_until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.push_line(line);
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("oomtrace exited early; stderr:\n{}", self.stderr_text())
                }
            }
        }
        true
    }

    /// Sends `signal`, then reads every remaining record until the collector
    /// exits; returns its exit status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    self.push_line(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("oomtrace did not stop within 20 s"),
            }
        }
        let status = self.child.wait().expect("wait for oomtrace");
        if let Some(reader) = &mut self.reader {
            // It saw the end of its input: it is ending or has ended.
            let _ = reader.wait();
        }
        status
    }

    pub fn kills(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["type"] == "oom_kill")
    }

    /// The `oom_kill` records whose victim is process `pid`.
    pub fn kills_of(&self, pid: u32) -> Vec<&Value> {
        self.kills().filter(|r| r["victim"]["pid"] == pid).collect()
    }

    /// Panics unless the `stop` record's counters say nothing was lost,
    /// dropped or left unjoined.
    pub fn assert_nothing_lost(&self) {
        let stop = self.stop_record();
        for counter in [
            "exits_never_seen",
            "lost_kills",
            "lost_exits",
            "events_dropped",
            "records_dropped",
        ] {
            assert_eq!(stop["counters"][counter], 0, "{counter}: {stop}");
        }
    }

    pub fn late_exits(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["type"] == "late_exit")
    }

    /// The last record, which must be `stop`.
    pub fn stop_record(&self) -> &Value {
        let stop = self.records.last().expect("records");
        assert_eq!(stop["type"], "stop", "the last record: {stop}");
        stop
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Whatever happened, leave no collector behind, nor its reader
        // (SIGKILL ends a stopped process too).
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = &mut self.reader {
            let _ = reader.kill();
            let _ = reader.wait();
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn spawn_reader(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}
