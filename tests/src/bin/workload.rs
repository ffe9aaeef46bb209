//! The test workload: moves itself into a cgroup, sets its oom_score_adj and
//! name, then allocates and touches memory until the OOM killer kills it.
//!
//! Usage:
//!   oomtrace-workload alloc [--cgroup DIR] [--adj N] [--comm-hex HEX]
//!                           [--threads N] [--wait-stdin]
//!   oomtrace-workload parent ALLOC-ARGS...
//!       stays where it is, runs `alloc ALLOC-ARGS` as its child, waits, and
//!       prints `child PID STATUS` (the raw wait status); exits 0.
//!   oomtrace-workload pidns [--cgroup DIR] MODE ARGS...
//!       what `unshare --pid --fork` does, as a container runtime starts a
//!       container: enters a new pid namespace and forks its PID 1, which
//!       moves into DIR (if given) and runs `oomtrace-workload MODE ARGS`.
//!       Prints `init HOST-PID` at once, and `init-status STATUS` (the raw
//!       wait status) when PID 1 ends; exits 0. It stays outside DIR, like
//!       a runtime's shim.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper: failing loudly is the point"
)]

use std::{
    io::Read,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::Command,
    time::Duration,
};

struct Options {
    cgroup: Option<String>,
    adj: Option<i32>,
    comm: Option<Vec<u8>>,
    threads: usize,
    wait_stdin: bool,
}

fn parse(args: &[String]) -> Options {
    let mut o = Options {
        cgroup: None,
        adj: None,
        comm: None,
        threads: 1,
        wait_stdin: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--cgroup" => o.cgroup = Some(value()),
            "--adj" => o.adj = Some(value().parse().unwrap()),
            "--comm-hex" => {
                let hex = value();
                o.comm = Some(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                );
            }
            "--threads" => o.threads = value().parse().unwrap(),
            "--wait-stdin" => o.wait_stdin = true,
            other => die(&format!("unknown argument {other}")),
        }
    }
    o
}

fn die(message: &str) -> ! {
    eprintln!("oomtrace-workload: {message}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("alloc") => alloc(parse(&args[1..])),
        Some("parent") => parent(&args[1..]),
        Some("pidns") => pidns(&args[1..]),
        _ => die("usage: oomtrace-workload alloc|parent ..."),
    }
}

fn parent(alloc_args: &[String]) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("alloc")
        .args(alloc_args)
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    println!("child {pid} {}", status.into_raw());
}

fn pidns(args: &[String]) {
    let (cgroup, rest) = match args {
        [flag, dir, rest @ ..] if flag == "--cgroup" => (Some(dir.clone()), rest),
        rest => (None, rest),
    };
    if rest.is_empty() {
        die("pidns needs a mode");
    }
    // SAFETY: unshare(CLONE_NEWPID) affects only children forked after it.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        die(&format!(
            "unshare(CLONE_NEWPID): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: this process is single-threaded here, so the child may run
    // arbitrary code before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // PID 1 of the new namespace.
        if let Some(dir) = &cgroup {
            std::fs::write(format!("{dir}/cgroup.procs"), "0").unwrap();
        }
        let error = Command::new(std::env::current_exe().unwrap())
            .args(rest)
            .exec();
        die(&format!("exec: {error}"));
    }
    println!("init {pid}");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("init-status {status}");
}

fn alloc(o: Options) {
    if let Some(dir) = &o.cgroup {
        // "0" means the writing process itself.
        std::fs::write(format!("{dir}/cgroup.procs"), "0").unwrap();
    }
    if let Some(adj) = o.adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).unwrap();
    }
    if let Some(comm) = &o.comm {
        let mut name = comm.clone();
        name.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    if o.wait_stdin {
        let mut byte = [0u8; 1];
        let _ = std::io::stdin().read(&mut byte);
    }
    if o.threads <= 1 {
        eat_memory();
    }
    // Only the last thread allocates; the leader and the others just wait.
    for i in 1..o.threads {
        let last = i == o.threads - 1;
        std::thread::spawn(move || {
            if last {
                eat_memory()
            } else {
                loop {
                    std::thread::sleep(Duration::from_secs(60))
                }
            }
        });
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Allocates 1 MiB at a time and writes every page, so it is resident.
fn eat_memory() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        kept.push(std::hint::black_box(chunk));
    }
}
