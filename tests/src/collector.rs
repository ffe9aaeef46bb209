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
    lines: Receiver<String>,
    /// Every record read so far, in order.
    pub records: Vec<Value>,
    stderr: PathBuf,
}

impl Collector {
    /// Starts `oomtrace run ARGS` and waits for its `start` record.
    pub fn start(env: &Env, args: &[&str]) -> Self {
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
        let lines = spawn_reader(stdout);
        let mut collector = Self {
            child,
            lines,
            records: Vec::new(),
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

    pub fn start_record(&self) -> &Value {
        &self.records[0]
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn next_record(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
                assert_eq!(value["schema"], 1, "{line}");
                self.records.push(value.clone());
                value
            }
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
        let matches = |r: &Value| r["type"] == "oom_kill" && pred(r);
        if let Some(found) = self.records.iter().find(|r| matches(r)) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching oom_kill record within {timeout:?}: {:?}",
                self.records
            );
            let record = self.next_record(left);
            if matches(&record) {
                return record;
            }
        }
    }

    /// Sends `signal`, then reads every remaining record until the collector
    /// exits; returns its exit status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("partial or invalid line ({e}): {line:?}"));
                    self.records.push(value);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("oomtrace did not stop within 20 s"),
            }
        }
        self.child.wait().expect("wait for oomtrace")
    }

    pub fn kills(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["type"] == "oom_kill")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Whatever happened, leave no collector behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
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
