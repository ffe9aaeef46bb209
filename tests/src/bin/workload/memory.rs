//! Workload modes with a shape in time, for the memory sampler's tests:
//!
//!   oomtrace-workload leak --cgroup DIR --rate-mib N
//!       moves into DIR, prints `leaking PID`, then allocates and touches
//!       1 MiB at a time, N MiB a second evenly, until the OOM kill.
//!   oomtrace-workload spike --cgroup DIR --hold-mib N --hold-ms MS
//!       moves into DIR, allocates and touches N MiB, prints `holding PID`,
//!       sleeps MS ms (flat), then allocates as fast as it can until the
//!       OOM kill.
//!   oomtrace-workload tmpfs-fill --cgroup DIR --file PATH --rate-mib N
//!       moves into DIR, prints `filling PID`, then appends 1 MiB at a time
//!       to PATH (on a tmpfs), N MiB a second, until the OOM kill: the
//!       charge is shmem, and the process itself maps none of it.

use std::{
    io::Write,
    time::{Duration, Instant},
};

/// `--NAME VALUE` pairs.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| super::die(&format!("missing {name} VALUE")))
}

fn number(args: &[String], name: &str) -> u64 {
    flag(args, name)
        .parse()
        .unwrap_or_else(|_| super::die(&format!("{name}: not a number")))
}

fn say(word: &str) {
    println!("{word} {}", std::process::id());
    let _ = std::io::stdout().flush();
}

/// Calls `step` `rate` times a second, evenly, forever.
fn paced(rate_per_s: u64, mut step: impl FnMut()) -> ! {
    let period = Duration::from_secs(1) / rate_per_s.max(1) as u32;
    let start = Instant::now();
    for i in 1u32.. {
        step();
        let due = start + period * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    unreachable!("u32 steps of at least a microsecond outlast any test")
}

pub fn leak(args: &[String]) {
    super::join_cgroup(flag(args, "--cgroup"));
    say("leaking");
    let mut kept = Vec::new();
    paced(number(args, "--rate-mib"), || {
        kept.push(super::touched_mib())
    });
}

pub fn spike(args: &[String]) {
    super::join_cgroup(flag(args, "--cgroup"));
    let held: Vec<Vec<u8>> = (0..number(args, "--hold-mib"))
        .map(|_| super::touched_mib())
        .collect();
    say("holding");
    std::thread::sleep(Duration::from_millis(number(args, "--hold-ms")));
    std::hint::black_box(&held);
    super::eat_memory()
}

pub fn tmpfs_fill(args: &[String]) {
    super::join_cgroup(flag(args, "--cgroup"));
    let path = flag(args, "--file");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| super::die(&format!("open {path}: {e}")));
    say("filling");
    let chunk = vec![1u8; 1 << 20];
    paced(number(args, "--rate-mib"), || {
        // A failed write (ENOMEM once the OOM killer chose this process)
        // is retried: the kill ends it.
        let _ = file.write_all(&chunk);
    });
}
