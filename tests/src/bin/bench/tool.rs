//! The tools under test: spawning one, reading its time-stamped output,
//! and what /proc says of its process tree.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{BPFTRACE_ATTACHED, BPFTRACE_PROGRAM, Config, READY_TIMEOUT};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tool {
    Oomtrace,
    Bpftrace,
}

impl Tool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Oomtrace => "oomtrace",
            Tool::Bpftrace => "bpftrace",
        }
    }
}

pub(crate) const TOOLS: [Tool; 2] = [Tool::Oomtrace, Tool::Bpftrace];

/// The tools in the order round `round` runs them: alternating which goes
/// first, so that neither always follows the same thing (a baseline, or
/// the other tool's teardown).
pub(crate) fn tools_for_round(round: usize) -> [Tool; 2] {
    if round.is_multiple_of(2) {
        TOOLS
    } else {
        [TOOLS[1], TOOLS[0]]
    }
}

/// One line a tool wrote, stamped when it reached us.
pub(crate) struct Line {
    pub(crate) stderr: bool,
    pub(crate) text: String,
    pub(crate) at: Instant,
    pub(crate) boot_ns: u64,
    pub(crate) mono_ns: u64,
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A running tool, its output read (and time-stamped) by two threads.
pub(crate) struct Running {
    pub(crate) tool: Tool,
    pub(crate) child: Child,
    pub(crate) lines: Receiver<Line>,
    pub(crate) seen: Vec<Line>,
    /// From spawn to the ready signal.
    pub(crate) ready_after: Duration,
    /// bpftrace only: from spawn to its "Attaching N probes..." line.
    pub(crate) attaching_after: Option<Duration>,
    pub(crate) stopped: bool,
}

impl Running {
    /// Spawns the tool and waits until it is attached.
    pub(crate) fn start(tool: Tool, cfg: &Config) -> Self {
        Self::start_with(tool, cfg, &[])
    }

    /// As [`Running::start`], with `oomtrace_args` after `oomtrace run`.
    pub(crate) fn start_with(tool: Tool, cfg: &Config, oomtrace_args: &[&str]) -> Self {
        let mut cmd = match tool {
            Tool::Oomtrace => {
                let mut cmd = Command::new(&cfg.env.oomtrace);
                cmd.arg("run").args(oomtrace_args);
                cmd
            }
            Tool::Bpftrace => {
                let mut cmd = Command::new(&cfg.bpftrace);
                // Line-buffered stdout, as oomtrace flushes every record.
                cmd.args(["-B", "line", "-e", BPFTRACE_PROGRAM])
                    .env(BPFTRACE_ATTACHED, "1");
                cmd
            }
        };
        let spawned = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tool.name()));
        let (tx, lines) = channel();
        read_lines(child.stdout.take().unwrap(), false, tx.clone());
        read_lines(child.stderr.take().unwrap(), true, tx);
        let mut running = Self {
            tool,
            child,
            lines,
            seen: Vec::new(),
            ready_after: Duration::ZERO,
            attaching_after: None,
            stopped: false,
        };
        let is_ready = |l: &Line| match tool {
            Tool::Oomtrace => !l.stderr,
            Tool::Bpftrace => l.text.trim() == BPFTRACE_ATTACHED,
        };
        running.wait_for("its ready signal", READY_TIMEOUT, |seen| {
            seen.iter().any(is_ready)
        });
        let ready = running.seen.iter().find(|l| is_ready(l)).unwrap();
        if tool == Tool::Oomtrace {
            check_start_record(&ready.text);
        }
        let ready_after = ready.at - spawned;
        running.ready_after = ready_after;
        running.attaching_after = running
            .seen
            .iter()
            .find(|l| !l.stderr && l.text.starts_with("Attaching "))
            .map(|l| l.at - spawned);
        running
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn stderr_text(&self) -> String {
        let lines = self.seen.iter().filter(|l| l.stderr);
        lines
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads lines until `done(all lines so far)` or `timeout`; false on timeout.
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Line]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} exited while waiting for {what}: {:?}; stderr:\n{}",
                    self.tool.name(),
                    self.child.try_wait(),
                    self.stderr_text()
                ),
            }
        }
        true
    }

    /// SIGTERM for oomtrace (it writes its `stop` record), SIGINT for
    /// bpftrace (its Ctrl-C); reads everything up to the end of its output.
    /// bpftrace 0.17 now and then misses a SIGINT that arrives just after
    /// it reports its probes attached, so it gets another every 5 s;
    /// oomtrace gets one signal, and not stopping on it is a failure.
    pub(crate) fn stop(&mut self) {
        let signal = match self.tool {
            Tool::Oomtrace => libc::SIGTERM,
            Tool::Bpftrace => libc::SIGINT,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), signal) };
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    panic!("{} did not stop within 30 s", self.tool.name())
                }
                Err(RecvTimeoutError::Timeout) if self.tool == Tool::Bpftrace => {
                    println!("bpftrace is still running 5 s after SIGINT; sending another");
                    // SAFETY: as above.
                    unsafe { libc::kill(self.pid(), signal) };
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let status = self.child.wait().unwrap();
        self.stopped = true;
        assert!(
            status.success(),
            "{} ended with {status:?}; stderr:\n{}",
            self.tool.name(),
            self.stderr_text()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.stopped {
            // Whatever happened, leave no tracer behind.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn read_lines(stream: impl Read + Send + 'static, stderr: bool, tx: Sender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = Line {
                stderr,
                text: String::from_utf8_lossy(&buf).trim_end().to_string(),
                at: Instant::now(),
                boot_ns: clock_ns(libc::CLOCK_BOOTTIME),
                mono_ns: clock_ns(libc::CLOCK_MONOTONIC),
            };
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// The start record must show both hooks attached, or nothing is measured.
pub(crate) fn check_start_record(text: &str) {
    let start: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("oomtrace's first line is not JSON ({e}): {text}"));
    assert_eq!(start["type"], "start", "oomtrace's first line: {text}");
    for hook in ["mark_victim", "process_exit"] {
        let probe = start["probes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == hook));
        assert!(
            probe.is_some_and(|p| p["mode"].is_string()),
            "oomtrace did not attach {hook}: {text}"
        );
    }
}

/// The tool's process and its descendants (bpftrace starts none, but if a
/// build of it did, they would count too).
pub(crate) fn process_tree(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(fields) = stat_fields(pid) {
            parent_of.push((pid, fields[1].parse::<i32>().unwrap_or(0)));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parent_of.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    tree
}

/// /proc/PID/stat after the `(comm)`: [0] state, [1] ppid, [11] utime, [12] stime.
pub(crate) fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A /proc/PID/status field in kB (VmRSS, VmHWM), summed over the tree.
pub(crate) fn status_kb(root: i32, key: &str) -> u64 {
    let field = |pid: i32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    process_tree(root).into_iter().filter_map(field).sum()
}

/// utime + stime of the tree, in seconds.
pub(crate) fn cpu_secs(root: i32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: u64 = process_tree(root)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0))
        .sum();
    ticks as f64 / ticks_per_sec
}

/// What one command cost, run to its end by [`run_to_end`].
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Cost {
    pub wall_s: f64,
    /// User + system time of the command and every process it waited for.
    pub cpu_s: f64,
    /// Its peak RSS (the largest of its waited-for tree), in kB.
    pub peak_rss_kb: f64,
}

/// Runs `command` to its end with its output discarded, and reads its cost
/// from wait4's rusage. A failed command fails the benchmark.
#[allow(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives its rusage"
)]
pub(crate) fn run_to_end(mut command: Command) -> Cost {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain integers and timevals; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing one status and one rusage.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let wall_s = started.elapsed().as_secs_f64();
    let code = std::process::ExitStatus::from_raw(status);
    assert!(code.success(), "{command:?}: {code}");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost {
        wall_s,
        cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_kb: usage.ru_maxrss as f64,
    }
}
