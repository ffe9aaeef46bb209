//! The memory sampler's cost: oomtrace's CPU time per second of wall time,
//! and its RSS, with 500 idle memcgs present, each holding one sleeping
//! process (the sampler follows memcgs that hold processes), at the default
//! `--sample-interval` (1 s) and with the sampler off (`0`), alternating.
//! Target: at most 1% of one CPU more than with the sampler off.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use oomtrace_tests::cgroup::MemCgroup;
use serde_json::json;

use crate::{
    Config,
    report::{Report, fmt_mib, median},
    tool::{Running, Tool, cpu_secs, status_kb},
};

const MEMCGS: usize = 500;
/// Time for the sampler to find every memcg (it rescans the tree every 3
/// intervals) and open its files before the measured window.
const WARM_UP: Duration = Duration::from_secs(5);
const TARGET_PERCENT: f64 = 1.0;

/// 500 memcgs with one `sleep` each; killed and removed on drop.
struct IdleMemcgs {
    cgroups: Vec<MemCgroup>,
    sleepers: Vec<Child>,
}

impl IdleMemcgs {
    fn create() -> Self {
        let mut cgroups = Vec::with_capacity(MEMCGS);
        let mut sleepers = Vec::with_capacity(MEMCGS);
        for i in 0..MEMCGS {
            let cg = MemCgroup::create(&format!("idle{i}"), None);
            let sleeper = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            std::fs::write(cg.dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
            cgroups.push(cg);
            sleepers.push(sleeper);
        }
        Self { cgroups, sleepers }
    }
}

impl Drop for IdleMemcgs {
    fn drop(&mut self) {
        for sleeper in &mut self.sleepers {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        self.cgroups.clear();
    }
}

/// One run: CPU % of one CPU over `window` after the warm-up, and VmRSS
/// (kB) at its end.
fn run(cfg: &Config, interval: &str) -> (f64, f64) {
    let mut running = Running::start_with(Tool::Oomtrace, cfg, &["--sample-interval", interval]);
    std::thread::sleep(WARM_UP);
    let before = cpu_secs(running.pid());
    std::thread::sleep(cfg.idle);
    let spent = cpu_secs(running.pid()) - before;
    let rss_kb = status_kb(running.pid(), "VmRSS") as f64;
    running.stop();
    (spent / cfg.idle.as_secs_f64() * 100.0, rss_kb)
}

pub(crate) fn sampler_cost(cfg: &Config, report: &mut Report) {
    let rounds = if cfg.idle >= Duration::from_secs(30) {
        3
    } else {
        1
    };
    println!(
        "sampler cost: {MEMCGS} idle memcgs, {rounds} round(s) of {:?} per setting",
        cfg.idle
    );
    let memcgs = IdleMemcgs::create();
    let (mut on_cpu, mut off_cpu, mut on_rss, mut off_rss) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (cpu, rss) = run(cfg, "1s");
        on_cpu.push(cpu);
        on_rss.push(rss);
        let (cpu, rss) = run(cfg, "0");
        off_cpu.push(cpu);
        off_rss.push(rss);
    }
    drop(memcgs);
    let (on, off) = (median(&on_cpu), median(&off_cpu));
    let added = on - off;
    report.row(
        &format!("sampler CPU, {MEMCGS} idle memcgs (% of a CPU)"),
        &format!("{on:.2}% (off {off:.2}%)"),
        "n/a",
        "",
        "+<=1%",
        Some(added <= TARGET_PERCENT),
    );
    let (rss_on, rss_off) = (median(&on_rss), median(&off_rss));
    report.row(
        &format!("sampler RSS, {MEMCGS} idle memcgs"),
        &format!("{} (off {})", fmt_mib(rss_on), fmt_mib(rss_off)),
        "n/a",
        "",
        "",
        None,
    );
    report.json.insert(
        "sampler".into(),
        json!({
            "memcgs": MEMCGS,
            "window_s": cfg.idle.as_secs_f64(),
            "cpu_percent_on": on_cpu,
            "cpu_percent_off": off_cpu,
            "rss_kb_on": on_rss,
            "rss_kb_off": off_rss,
            "cpu_percent_added_median": added,
        }),
    );
}
