//! `oomtrace rank` against seed 000's `rank_oom.sh` (`--only rank`).
//!
//! 2,000 `sleep` processes in a memcg of the benchmark's own join the
//! machine's processes; both tools then rank all of /proc: `oomtrace rank
//! --top 15` (the script prints 15) and the seed's script as committed in
//! tests/peers/rank_oom.sh, run by bash. Alternating, three rounds (one
//! with --quick); the figures are the medians of wall time and of CPU time
//! (user + system of the tool and every process it waited for, from
//! wait4's rusage). Target: rank at most 0.02 of the script's time.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use oomtrace_tests::{cgroup::MemCgroup, workload::Workload};
use serde_json::json;

use crate::{
    Config,
    report::{Report, median},
    tool::{Cost, run_to_end},
};

const SLEEPERS: usize = 2000;
const TIME_TARGET: f64 = 0.02;

/// How many processes `cg` holds.
fn procs(cg: &MemCgroup) -> usize {
    std::fs::read_to_string(cg.dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .count()
}

pub(crate) fn rank_speed(cfg: &Config, report: &mut Report) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/rank_oom.sh");
    let cg = MemCgroup::create("bench-rank", None);
    // A shell in the memcg from its start forks the sleepers there, then
    // waits; the memcg's removal kills them all.
    let _shell = Workload::spawn(
        &cfg.env,
        "exec-in",
        &[
            cg.dir_str(),
            "sh",
            "-c",
            &format!("i=0; while [ $i -lt {SLEEPERS} ]; do sleep 3600 & i=$((i+1)); done; wait"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while procs(&cg) < SLEEPERS + 1 {
        assert!(
            Instant::now() < deadline,
            "{SLEEPERS} sleepers within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    println!(
        "rank speed: {SLEEPERS} sleepers in {}; {total} processes in /proc",
        cg.path
    );
    let rounds = if cfg.idle >= Duration::from_secs(30) {
        3
    } else {
        1
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut command = Command::new(&cfg.env.oomtrace);
        command.args(["rank", "--top", "15"]);
        ours.push(run_to_end(command));
        let mut command = Command::new("bash");
        command.arg(&script);
        theirs.push(run_to_end(command));
    }
    let wall = |v: &[Cost]| median(&v.iter().map(|c| c.wall_s).collect::<Vec<_>>());
    let cpu = |v: &[Cost]| median(&v.iter().map(|c| c.cpu_s).collect::<Vec<_>>());
    let ratio = wall(&ours) / wall(&theirs);
    report.row(
        &format!("rank over {total} processes"),
        &format!("{:.0} ms", wall(&ours) * 1000.0),
        &format!("{:.1} s (rank_oom.sh)", wall(&theirs)),
        &format!("{ratio:.4}x"),
        "<=0.02x",
        Some(ratio <= TIME_TARGET),
    );
    report.row(
        "rank CPU time",
        &format!("{:.0} ms", cpu(&ours) * 1000.0),
        &format!("{:.1} s (rank_oom.sh)", cpu(&theirs)),
        &format!("{:.4}x", cpu(&ours) / cpu(&theirs)),
        "",
        None,
    );
    report.json.insert(
        "rank".into(),
        json!({
            "sleepers": SLEEPERS, "processes": total,
            "rank": ours, "script": theirs, "ratio": ratio,
        }),
    );
}
