//! Storm capture and latency: one OOM-kill storm per tool and round.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use oomtrace_tests::storm;
use serde_json::{Value, json};

use crate::{
    Config, OOMTRACE_EXIT_WAIT, STORM_LIMIT,
    report::{Report, fmt_mib, fmt_ms, median, ns_to_ms, percentile, ratio_text},
    tool::{Line, Running, TOOLS, Tool, cpu_secs, status_kb},
};

/// What one tool made of one storm.
#[derive(Default)]
pub(crate) struct StormRun {
    pub(crate) kernel_kills: u64,
    pub(crate) victims: usize,
    /// Distinct storm victims the tool reported.
    pub(crate) recorded: usize,
    /// Reports beyond one per victim.
    pub(crate) duplicates: usize,
    /// Reports joined to an exit with code 137 (128 + SIGKILL).
    joined_137: usize,
    pub(crate) cpu_secs: f64,
    pub(crate) hwm_kb: u64,
    /// From the kill to the line that has both the kill and the exit:
    /// oomtrace's joined record, bpftrace's exit line.
    pub(crate) kill_to_line_ms: Vec<f64>,
    /// bpftrace only: from the kill to its kill line (the exit not yet known).
    pub(crate) kill_only_line_ms: Vec<f64>,
    pub(crate) exit_to_line_ms: Vec<f64>,
    /// oomtrace's `stop` counters; bpftrace's "Lost N events" lines.
    pub(crate) losses: Value,
    pub(crate) storm_secs: f64,
}

pub(crate) fn storm_capture(cfg: &Config, report: &mut Report) {
    let mut runs: Vec<(Tool, StormRun)> = Vec::new();
    for _ in 0..cfg.storm_rounds {
        for tool in TOOLS {
            runs.push((tool, storm_run(cfg, tool)));
        }
    }
    let of = |tool: Tool| runs.iter().filter(move |r| r.0 == tool).map(|r| &r.1);
    let total = |tool: Tool, f: fn(&StormRun) -> usize| of(tool).map(f).sum::<usize>();
    let kernel: usize = of(Tool::Oomtrace).map(|r| r.kernel_kills as usize).sum();
    let kernel_b: usize = of(Tool::Bpftrace).map(|r| r.kernel_kills as usize).sum();
    let (rec_o, rec_b) = (
        total(Tool::Oomtrace, |r| r.recorded),
        total(Tool::Bpftrace, |r| r.recorded),
    );
    report.row(
        &format!(
            "storm capture ({}x{} kills, {} rounds)",
            cfg.cgroups, cfg.kills_per_cgroup, cfg.storm_rounds
        ),
        &format!("{rec_o}/{kernel}"),
        &format!("{rec_b}/{kernel_b}"),
        "",
        "100%",
        Some(rec_o == kernel && kernel > 0 && total(Tool::Oomtrace, |r| r.duplicates) == 0),
    );
    let (j_o, j_b) = (
        total(Tool::Oomtrace, |r| r.joined_137),
        total(Tool::Bpftrace, |r| r.joined_137),
    );
    report.row(
        "kills joined to exit 137",
        &format!("{j_o}/{kernel}"),
        &format!("{j_b}/{kernel_b}"),
        "",
        "100%",
        Some(j_o == kernel && kernel > 0),
    );
    let med = |tool: Tool, f: fn(&StormRun) -> f64| median(&of(tool).map(f).collect::<Vec<_>>());
    let cpu = (
        med(Tool::Oomtrace, |r| r.cpu_secs),
        med(Tool::Bpftrace, |r| r.cpu_secs),
    );
    report.row(
        "CPU during storm (median)",
        &format!("{:.2} s", cpu.0),
        &format!("{:.2} s", cpu.1),
        &ratio_text(cpu.0, cpu.1),
        "",
        None,
    );
    let hwm = (
        med(Tool::Oomtrace, |r| r.hwm_kb as f64),
        med(Tool::Bpftrace, |r| r.hwm_kb as f64),
    );
    report.row(
        "peak RSS, VmHWM after storm (median)",
        &fmt_mib(hwm.0),
        &fmt_mib(hwm.1),
        &format!("{:.2}", hwm.0 / hwm.1),
        "<=0.2",
        Some(hwm.0 / hwm.1 <= 0.2),
    );
    let pooled = |tool: Tool, f: fn(&StormRun) -> &Vec<f64>| -> Vec<f64> {
        of(tool).flat_map(|r| f(r).iter().copied()).collect()
    };
    for (what, f) in [
        (
            "kill->complete line",
            (|r| &r.kill_to_line_ms) as fn(&StormRun) -> &Vec<f64>,
        ),
        ("exit->line", |r| &r.exit_to_line_ms),
    ] {
        let (o, b) = (pooled(Tool::Oomtrace, f), pooled(Tool::Bpftrace, f));
        for p in [50.0, 99.0] {
            let (po, pb) = (percentile(&o, p), percentile(&b, p));
            let target = what == "exit->line" && p == 99.0;
            report.row(
                &format!("{what} latency p{p}"),
                &fmt_ms(po),
                &fmt_ms(pb),
                &ratio_text(po, pb),
                if target { "<=10 ms" } else { "" },
                target.then_some(po <= 10.0),
            );
        }
    }
    let json_runs: Vec<Value> = runs
        .iter()
        .map(|(tool, r)| {
            json!({
                "tool": tool.name(), "kernel_kills": r.kernel_kills, "victims": r.victims,
                "recorded": r.recorded, "duplicates": r.duplicates, "joined_137": r.joined_137,
                "cpu_secs": r.cpu_secs, "vm_hwm_kb": r.hwm_kb, "storm_secs": r.storm_secs,
                "kill_to_line_ms": r.kill_to_line_ms, "kill_only_line_ms": r.kill_only_line_ms, "exit_to_line_ms": r.exit_to_line_ms,
                "losses": r.losses,
            })
        })
        .collect();
    report.json.insert(
        "storm".into(),
        json!({"cgroups": cfg.cgroups, "kills_per_cgroup": cfg.kills_per_cgroup,
               "limit_bytes": STORM_LIMIT, "runs": json_runs,
               "median": {"oomtrace_cpu_secs": cpu.0, "bpftrace_cpu_secs": cpu.1,
                          "oomtrace_vm_hwm_kb": hwm.0, "bpftrace_vm_hwm_kb": hwm.1}}),
    );
}

/// One storm with `tool` attached: waits until the tool has reported every
/// kill the kernel counted (or until it plainly never will), then stops it.
pub(crate) fn storm_run(cfg: &Config, tool: Tool) -> StormRun {
    let mut running = Running::start(tool, cfg);
    let cpu_at_ready = cpu_secs(running.pid());
    let outcome = storm::storm(&cfg.env, cfg.cgroups, cfg.kills_per_cgroup, STORM_LIMIT);
    let kernel_kills = outcome.kernel_kills();
    let pids: HashSet<u32> = outcome.victims.iter().map(|v| v.pid).collect();
    // Records appear once exits are joined (or after --exit-wait without
    // one); give the tool that and a margin before counting what is missing.
    let complete =
        |seen: &[Line]| parse_storm(tool, seen, &outcome).recorded as u64 >= kernel_kills;
    let all_in = running.wait_for(
        "its records",
        OOMTRACE_EXIT_WAIT + Duration::from_secs(5),
        complete,
    );
    // Read before stopping: the stop itself is not part of the storm.
    let cpu_secs = cpu_secs(running.pid()) - cpu_at_ready;
    let hwm_kb = status_kb(running.pid(), "VmHWM:");
    running.stop();
    let run = StormRun {
        kernel_kills,
        victims: outcome.victims.len(),
        storm_secs: outcome.elapsed.as_secs_f64(),
        cpu_secs,
        hwm_kb,
        ..parse_storm(tool, &running.seen, &outcome)
    };
    println!(
        "storm with {}: {} kills in {:.1} s ({} SIGKILLed), {} recorded{}, {} joined to 137",
        tool.name(),
        kernel_kills,
        run.storm_secs,
        outcome.sigkilled(),
        run.recorded,
        if all_in { "" } else { " (gave up waiting)" },
        run.joined_137
    );
    assert_eq!(
        pids.len(),
        outcome.victims.len(),
        "a pid was reused within one storm"
    );
    run
}

/// Counts and latencies of what `tool` wrote about this storm's victims
/// (anything else, such as kills elsewhere on the machine, is ignored).
pub(crate) fn parse_storm(tool: Tool, lines: &[Line], outcome: &storm::StormOutcome) -> StormRun {
    let mut run = StormRun::default();
    let mut reported: HashMap<u32, usize> = HashMap::new();
    let mut kill_mono_ns: HashMap<u32, u64> = HashMap::new();
    for line in lines.iter().filter(|l| !l.stderr) {
        match tool {
            Tool::Oomtrace => {
                let Ok(record) = serde_json::from_str::<Value>(&line.text) else {
                    continue;
                };
                if record["type"] == "stop" {
                    run.losses = record["counters"].clone();
                }
                let pid = record["victim"]["pid"].as_u64().unwrap_or(0) as u32;
                let ours = outcome.victim(pid).is_some_and(|v| {
                    record["victim"]["cgroup"]["path"].as_str() == Some(v.cgroup.as_str())
                });
                if record["type"] != "oom_kill" || !ours {
                    continue;
                }
                *reported.entry(pid).or_default() += 1;
                let kill_ns = record["boot_ns"].as_u64().unwrap();
                run.kill_to_line_ms.push(ns_to_ms(line.boot_ns, kill_ns));
                let exit = &record["exit"];
                if exit["observed"] == true {
                    let delay_ns = (exit["delay_ms"].as_f64().unwrap() * 1e6) as u64;
                    run.exit_to_line_ms
                        .push(ns_to_ms(line.boot_ns, kill_ns + delay_ns));
                    if exit["code"] == 137 {
                        run.joined_137 += 1;
                    }
                }
            }
            Tool::Bpftrace => {
                let fields: Vec<&str> = line.text.splitn(4, ' ').collect();
                if let ["Lost", n, ..] = fields[..] {
                    let lost = run.losses.as_u64().unwrap_or(0) + n.parse::<u64>().unwrap_or(0);
                    run.losses = json!(lost);
                }
                let (Some(kind), Some(pid), Some(a), Some(b)) = (
                    fields.first(),
                    fields.get(1).and_then(|p| p.parse::<u32>().ok()),
                    fields.get(2).and_then(|v| v.parse::<i64>().ok()),
                    fields.get(3),
                ) else {
                    continue;
                };
                if outcome.victim(pid).is_none() {
                    continue;
                }
                match *kind {
                    "kill" => {
                        *reported.entry(pid).or_default() += 1;
                        kill_mono_ns.insert(pid, a as u64);
                        run.kill_only_line_ms.push(ns_to_ms(line.mono_ns, a as u64));
                    }
                    "exit" => {
                        // task->exit_code is a wait status: the signal in the low 7 bits.
                        let signal = a & 0x7f;
                        let code = if signal != 0 { 128 + signal } else { a >> 8 };
                        if code == 137 && kill_mono_ns.contains_key(&pid) {
                            run.joined_137 += 1;
                        }
                        if let (Some(&kill), Ok(delay)) = (kill_mono_ns.get(&pid), b.parse::<u64>())
                        {
                            // The exit line is bpftrace's complete account of
                            // the kill, as oomtrace's joined record is.
                            run.kill_to_line_ms.push(ns_to_ms(line.mono_ns, kill));
                            run.exit_to_line_ms
                                .push(ns_to_ms(line.mono_ns, kill + delay));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    run.recorded = reported.len();
    run.duplicates = reported.values().map(|n| n - 1).sum();
    run
}
