//! Storm capture and latency: one OOM-kill storm per tool and round, of
//! allocators (capture, CPU, memory, latency) and of shell pipelines
//! (capture and joins, where victims are slow to exit).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use oomtrace_tests::{
    cgroup::MemCgroup,
    storm::{self, Ran, Shape},
};
use serde_json::{Value, json};

use crate::{
    Config, OOMTRACE_EXIT_WAIT,
    report::{Report, fmt_mib, fmt_ms, median, ns_to_ms, percentile, ratio_text},
    tool::{Line, Running, Tool, cpu_secs, status_kb, tools_for_round},
};

/// What one tool made of one storm.
#[derive(Default)]
pub(crate) struct StormRun {
    pub(crate) kernel_kills: u64,
    /// Processes the storm started (allocators, or pipelines' shells).
    pub(crate) processes: usize,
    /// Distinct storm victims the tool reported.
    pub(crate) recorded: usize,
    /// Reports beyond one per victim.
    pub(crate) duplicates: usize,
    /// Reported kills whose exit the tool reported too (any code).
    exits_known: usize,
    /// Pids of reported kills whose exit the tool did not report.
    no_exit: Vec<u32>,
    /// Reported kills joined to an exit with code 137 (128 + SIGKILL).
    joined_137: usize,
    /// oomtrace only: of those, joined by a `late_exit` record.
    joined_late: usize,
    pub(crate) cpu_secs: f64,
    pub(crate) hwm_kb: u64,
    /// From the kill to the line that has both the kill and the exit:
    /// oomtrace's joined record (or late exit), bpftrace's exit line.
    pub(crate) kill_to_line_ms: Vec<f64>,
    /// bpftrace only: from the kill to its kill line (the exit not yet known).
    pub(crate) kill_only_line_ms: Vec<f64>,
    pub(crate) exit_to_line_ms: Vec<f64>,
    /// oomtrace's `stop` counters; bpftrace's "Lost N events" lines.
    pub(crate) losses: Value,
    pub(crate) storm_secs: f64,
}

/// `rounds` storms of `shape` per tool, alternating which tool goes first.
fn storm_rounds(cfg: &Config, shape: Shape) -> Vec<(Tool, StormRun)> {
    let mut runs = Vec::new();
    for round in 0..cfg.storm_rounds {
        for tool in tools_for_round(round) {
            runs.push((tool, storm_run(cfg, tool, shape)));
        }
    }
    runs
}

fn of(runs: &[(Tool, StormRun)], tool: Tool) -> impl Iterator<Item = &StormRun> {
    runs.iter().filter(move |r| r.0 == tool).map(|r| &r.1)
}

/// The two capture rows, against the kernel's count: kills recorded, and
/// kills joined to their exit 137.
fn capture_rows(report: &mut Report, labels: [&str; 2], runs: &[(Tool, StormRun)]) {
    let total =
        |tool: Tool, f: fn(&StormRun) -> usize| -> usize { of(runs, tool).map(f).sum::<usize>() };
    let kernel = total(Tool::Oomtrace, |r| r.kernel_kills as usize);
    let kernel_b = total(Tool::Bpftrace, |r| r.kernel_kills as usize);
    let (rec_o, rec_b) = (
        total(Tool::Oomtrace, |r| r.recorded),
        total(Tool::Bpftrace, |r| r.recorded),
    );
    report.row(
        labels[0],
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
    let late = total(Tool::Oomtrace, |r| r.joined_late);
    report.row(
        labels[1],
        &if late > 0 {
            format!("{j_o}/{kernel} ({late} late)")
        } else {
            format!("{j_o}/{kernel}")
        },
        &format!("{j_b}/{kernel_b}"),
        "",
        "100%",
        Some(j_o == kernel && kernel > 0),
    );
}

/// Every run's figures, for bench.json.
fn json_runs(runs: &[(Tool, StormRun)]) -> Vec<Value> {
    runs.iter()
        .map(|(tool, r)| {
            json!({
                "tool": tool.name(), "kernel_kills": r.kernel_kills, "processes": r.processes,
                "recorded": r.recorded, "duplicates": r.duplicates, "exits_known": r.exits_known,
                "joined_137": r.joined_137, "joined_late": r.joined_late, "no_exit": r.no_exit,
                "cpu_secs": r.cpu_secs, "vm_hwm_kb": r.hwm_kb, "storm_secs": r.storm_secs,
                "kill_to_line_ms": r.kill_to_line_ms, "kill_only_line_ms": r.kill_only_line_ms, "exit_to_line_ms": r.exit_to_line_ms,
                "losses": r.losses,
            })
        })
        .collect()
}

pub(crate) fn storm_capture(cfg: &Config, report: &mut Report) {
    let runs = storm_rounds(cfg, Shape::Allocator);
    capture_rows(
        report,
        [
            &format!(
                "storm capture ({}x{} kills, {} rounds)",
                cfg.cgroups, cfg.kills_per_cgroup, cfg.storm_rounds
            ),
            "kills joined to exit 137",
        ],
        &runs,
    );
    let med =
        |tool: Tool, f: fn(&StormRun) -> f64| median(&of(&runs, tool).map(f).collect::<Vec<_>>());
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
        of(&runs, tool).flat_map(|r| f(r).iter().copied()).collect()
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
    report.json.insert(
        "storm".into(),
        json!({"shape": Shape::Allocator.name(), "cgroups": cfg.cgroups,
               "kills_per_cgroup": cfg.kills_per_cgroup,
               "limit_bytes": Shape::Allocator.limit(), "runs": json_runs(&runs),
               "median": {"oomtrace_cpu_secs": cpu.0, "bpftrace_cpu_secs": cpu.1,
                          "oomtrace_vm_hwm_kb": hwm.0, "bpftrace_vm_hwm_kb": hwm.1}}),
    );
}

/// The pipeline storm, both tools at their defaults: capture and joins.
pub(crate) fn pipeline_storm_capture(cfg: &Config, report: &mut Report) {
    let runs = storm_rounds(cfg, Shape::Pipeline);
    capture_rows(
        report,
        [
            &format!(
                "pipeline storm capture ({}x{}, {} rounds)",
                cfg.cgroups, cfg.kills_per_cgroup, cfg.storm_rounds
            ),
            "pipeline kills joined to exit 137",
        ],
        &runs,
    );
    report.json.insert(
        "pipeline_storm".into(),
        json!({"shape": Shape::Pipeline.name(), "pipeline": storm::PIPELINE,
               "cgroups": cfg.cgroups, "kills_per_cgroup": cfg.kills_per_cgroup,
               "limit_bytes": Shape::Pipeline.limit(), "runs": json_runs(&runs)}),
    );
}

/// One storm with `tool` attached: waits until the tool has reported every
/// kill the kernel counted, each with its exit (or until it plainly never
/// will), then stops it.
pub(crate) fn storm_run(cfg: &Config, tool: Tool, shape: Shape) -> StormRun {
    let mut running = Running::start(tool, cfg);
    let cpu_at_ready = cpu_secs(running.pid());
    let outcome = storm::storm(&cfg.env, shape, cfg.cgroups, cfg.kills_per_cgroup);
    let kernel_kills = outcome.kernel_kills();
    let ran = &outcome.ran;
    let cgroups = &outcome.cgroups;
    // Records appear once exits are joined (or after --exit-wait without
    // one, the exit then in a late_exit); give the tool that and a margin
    // before counting what is missing.
    let complete = |seen: &[Line]| {
        let run = parse_storm(tool, seen, ran, cgroups);
        run.recorded as u64 >= kernel_kills && run.exits_known >= run.recorded
    };
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
        processes: ran.processes.len(),
        storm_secs: ran.elapsed.as_secs_f64(),
        cpu_secs,
        hwm_kb,
        ..parse_storm(tool, &running.seen, ran, cgroups)
    };
    println!(
        "{} storm with {}: {} kills in {:.1} s ({} of {} ended by their kill), {} recorded{}, {} \
         joined to 137{}",
        shape.name(),
        tool.name(),
        kernel_kills,
        run.storm_secs,
        ran.oom_killed(),
        ran.processes.len(),
        run.recorded,
        if all_in { "" } else { " (gave up waiting)" },
        run.joined_137,
        if run.joined_late > 0 {
            format!(" ({} by a late_exit)", run.joined_late)
        } else {
            String::new()
        }
    );
    if !run.no_exit.is_empty() {
        let named: Vec<String> = run
            .no_exit
            .iter()
            .map(|pid| match ran.kernel_line(*pid) {
                Some(k) => format!("{pid} ({})", String::from_utf8_lossy(&k.comm)),
                None => pid.to_string(),
            })
            .collect();
        println!("{} reported no exit for: {}", tool.name(), named.join(", "));
    }
    if ran.kernel_lines.len() as u64 != kernel_kills {
        // bpftrace's pipeline kills are told apart by these lines.
        println!(
            "warning: the kernel logged {} of the storm's {kernel_kills} kills where this \
             benchmark could read them (log overrun {} times)",
            ran.kernel_lines.len(),
            ran.kmsg_overruns
        );
    }
    let pids: HashSet<u32> = ran.processes.iter().map(|p| p.pid).collect();
    assert_eq!(
        pids.len(),
        ran.processes.len(),
        "a pid was reused within one storm"
    );
    run
}

/// Counts and latencies of what `tool` wrote about this storm's victims
/// (anything else, such as kills elsewhere on the machine, is ignored):
/// oomtrace's records are the storm's by their victim's cgroup, bpftrace's
/// lines (which name no cgroup) by their pid, a storm's victim per the
/// storm itself (the allocators it started; the tails the kernel logged).
pub(crate) fn parse_storm(
    tool: Tool,
    lines: &[Line],
    ran: &Ran,
    cgroups: &[MemCgroup],
) -> StormRun {
    let mut run = StormRun::default();
    let mut reported: HashMap<u32, usize> = HashMap::new();
    match tool {
        Tool::Oomtrace => parse_oomtrace(lines, cgroups, &mut run, &mut reported),
        Tool::Bpftrace => parse_bpftrace(lines, ran, &mut run, &mut reported),
    }
    run.recorded = reported.len();
    run.duplicates = reported.values().map(|n| n - 1).sum();
    run
}

fn parse_oomtrace(
    lines: &[Line],
    cgroups: &[MemCgroup],
    run: &mut StormRun,
    reported: &mut HashMap<u32, usize>,
) {
    let records: Vec<(&Line, Value)> = lines
        .iter()
        .filter(|l| !l.stderr)
        .filter_map(|l| Some((l, serde_json::from_str::<Value>(&l.text).ok()?)))
        .collect();
    // Exits that came after their kill's record: (run_id, seq) -> the line.
    let late: HashMap<(&str, u64), (&Line, &Value)> = records
        .iter()
        .filter(|(_, r)| r["type"] == "late_exit")
        .filter_map(|(l, r)| Some(((r["run_id"].as_str()?, r["seq"].as_u64()?), (*l, r))))
        .collect();
    for (line, record) in &records {
        if record["type"] == "stop" {
            run.losses = record["counters"].clone();
        }
        let path = record["victim"]["cgroup"]["path"].as_str();
        let ours = cgroups.iter().any(|c| path == Some(c.path.as_str()));
        if record["type"] != "oom_kill" || !ours {
            continue;
        }
        let pid = record["victim"]["pid"].as_u64().unwrap_or(0) as u32;
        *reported.entry(pid).or_default() += 1;
        let kill_ns = record["boot_ns"].as_u64().unwrap();
        let key = record["run_id"].as_str().zip(record["seq"].as_u64());
        // The line that completes the kill: its own, or its late exit.
        let (complete, exit) = if record["exit"]["observed"] == true {
            (*line, &record["exit"])
        } else if let Some((late_line, late)) = key.and_then(|k| late.get(&k)) {
            run.joined_late += usize::from(late["exit"]["code"] == 137);
            (*late_line, &late["exit"])
        } else {
            run.no_exit.push(pid);
            continue;
        };
        run.exits_known += 1;
        run.kill_to_line_ms
            .push(ns_to_ms(complete.boot_ns, kill_ns));
        let delay_ns = (exit["delay_ms"].as_f64().unwrap_or(0.0) * 1e6) as u64;
        run.exit_to_line_ms
            .push(ns_to_ms(complete.boot_ns, kill_ns + delay_ns));
        if exit["code"] == 137 {
            run.joined_137 += 1;
        }
    }
}

fn parse_bpftrace(
    lines: &[Line],
    ran: &Ran,
    run: &mut StormRun,
    reported: &mut HashMap<u32, usize>,
) {
    let mut kill_mono_ns: HashMap<u32, u64> = HashMap::new();
    let mut exited: HashSet<u32> = HashSet::new();
    for line in lines.iter().filter(|l| !l.stderr) {
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
        if !ran.is_victim(pid) {
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
                if let Some(&kill) = kill_mono_ns.get(&pid) {
                    run.exits_known += 1;
                    exited.insert(pid);
                    if code == 137 {
                        run.joined_137 += 1;
                    }
                    if let Ok(delay) = b.parse::<u64>() {
                        // The exit line is bpftrace's complete account of
                        // the kill, as oomtrace's joined record is.
                        run.kill_to_line_ms.push(ns_to_ms(line.mono_ns, kill));
                        run.exit_to_line_ms
                            .push(ns_to_ms(line.mono_ns, kill + delay));
                    }
                }
            }
            _ => {}
        }
    }
    let mut no_exit: Vec<u32> = reported
        .keys()
        .copied()
        .filter(|pid| !exited.contains(pid))
        .collect();
    no_exit.sort_unstable();
    run.no_exit = no_exit;
}
