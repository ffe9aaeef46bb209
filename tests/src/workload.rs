//! The test workload as a child process: `oomtrace-workload MODE ARGS`
//! (src/bin/workload.rs), its stdin and stdout piped, killed on drop.

use std::{
    io::Write,
    process::{Child, Command, ExitStatus, Stdio},
};

use crate::collector::Env;

/// A workload process: `oomtrace-workload alloc ...`.
pub struct Workload {
    pub child: Child,
}

impl Workload {
    pub fn spawn(env: &Env, mode: &str, args: &[&str]) -> Self {
        let child = Command::new(&env.workload)
            .arg(mode)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn workload: {e}"));
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets a `--wait-stdin` workload start allocating.
    pub fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"g").expect("release workload");
        stdin.flush().expect("flush");
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait workload")
    }

    /// The workload's next line on stdout: it says `WORD NUMBER`; returns
    /// the number.
    pub fn said(&mut self, word: &str) -> u32 {
        let rest = self.said_line(word);
        rest.trim()
            .parse()
            .unwrap_or_else(|_| panic!("the workload said `{word} {rest}`, not `{word} N`"))
    }

    /// The workload's next line on stdout, which starts with `word`; returns
    /// the rest of it.
    pub fn said_line(&mut self, word: &str) -> String {
        let stdout = self.child.stdout.as_mut().expect("stdout");
        // Byte by byte: a buffered reader could take more than this line.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while std::io::Read::read(stdout, &mut byte).expect("read workload") == 1 {
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line);
        line.strip_prefix(word)
            .map(|rest| rest.trim().to_string())
            .unwrap_or_else(|| panic!("the workload said {line:?}, not `{word} ...`"))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until process `pid` runs the workload (its comm) and ignores
/// SIGTERM (`SigIgn` in /proc/PID/status): a container's PID 1 in `idle
/// --ignore-term` mode is then past its set-up, behind any entrypoint shell.
pub fn wait_until_ignoring_term(pid: u32) {
    for _ in 0..1000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ignored = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0);
        if stat.contains("(oomtrace-worklo)") && ignored {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("PID {pid} never ignored SIGTERM");
}
