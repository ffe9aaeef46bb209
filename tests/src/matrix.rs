//! The attach-mode matrix: which scenarios run under which mode. The same
//! scenario functions the cargo tests run, here run once per mode, on the
//! host or inside a VM booted with another kernel (`cargo xtask vmtest`).
//!
//! Output, one line each, for `xtask` to parse:
//! `OOMTRACE-MATRIX kernel=K cgroup=V mode=M scenario=S result=pass|fail|n/a secs=T [why=...]`
//! and, last, `OOMTRACE-MATRIX-DONE pass=N fail=N na=N`.

use std::{panic::AssertUnwindSafe, process::Command, time::Instant};

use serde_json::Value;

use crate::{
    Env, attribution, cgroup, fired_limit, memcg_counters, memory, memory_edges, messages,
    operations, paths, rank, scenarios, signals, signals_vm, stall,
};

type Scenario = (&'static str, fn(&Env));

/// Every scenario that depends on the kernel (the collector's own life-cycle
/// tests, which do not, run only on the host).
const KILLS: &[Scenario] = &[
    ("single_threaded_victim", scenarios::single_threaded_victim),
    ("multi_threaded_victim", scenarios::multi_threaded_victim),
    (
        "child_killed_parent_survives",
        scenarios::child_killed_parent_survives,
    ),
    ("hostile_comm", scenarios::hostile_comm),
    ("two_cgroups_at_once", scenarios::two_cgroups_at_once),
    (
        "cgroup_removed_after_kill",
        scenarios::cgroup_removed_after_kill,
    ),
    ("parent_limit_fires", scenarios::parent_limit_fires),
    (
        "sibling_at_its_own_limit_is_not_blamed",
        fired_limit::sibling_at_its_own_limit_is_not_blamed,
    ),
    ("container_init_killed", attribution::container_init_killed),
    (
        "container_child_killed_container_survives",
        attribution::container_child_killed_container_survives,
    ),
    (
        "oom_group_takes_the_container",
        attribution::oom_group_takes_the_container,
    ),
    (
        "host_pid_container_main_killed",
        attribution::host_pid_container_main_killed,
    ),
    (
        "host_pid_container_child_killed",
        attribution::host_pid_container_child_killed,
    ),
    ("check_promises_hold", messages::check_promises_hold),
];

/// The memcg counters read by the raw mark_victim walk, the same in every
/// raw mode: one per kernel.
const COUNTERS: &[Scenario] = &[("counters_at_the_kill", memcg_counters::counters_at_the_kill)];

/// Victims whose threads and pids move under the exit join (see
/// `scenarios.rs`). The exit path does not depend on how oom_kill_process
/// is hooked, so one raw mode per kernel runs them.
const EXIT_PATHS: &[Scenario] = &[
    (
        "leader_exits_before_victim_thread",
        scenarios::leader_exits_before_victim_thread,
    ),
    (
        "exec_from_non_leader_thread",
        scenarios::exec_from_non_leader_thread,
    ),
];

/// SIGKILLs from others than the OOM killer (a real userspace OOM killer's
/// in the VMs only), and containers' PID 1 exits (see `signals.rs`,
/// `signals_vm.rs`, `attribution/exits.rs`). The signal hook is the same
/// in every mode, so one raw mode per kernel runs them.
const SIGNALS: &[Scenario] = &[
    (
        "kill_9_from_a_shell_names_the_shell",
        signals::kill_9_from_a_shell_names_the_shell,
    ),
    (
        "sigkill_after_sigterm_and_group_kills",
        signals::sigkill_after_sigterm_and_group_kills,
    ),
    (
        "multi_threaded_target_is_one_record",
        signals::multi_threaded_target_is_one_record,
    ),
    (
        "shared_mm_kills_belong_to_the_oom_kill",
        signals::shared_mm_kills_belong_to_the_oom_kill,
    ),
    (
        "marked_while_dying_is_not_an_oom_kill",
        signals::marked_while_dying_is_not_an_oom_kill,
    ),
    (
        "container_stop_timeout",
        attribution::container_stop_timeout,
    ),
    (
        "container_drained_after_a_child_oom",
        attribution::container_drained_after_a_child_oom,
    ),
    (
        "userspace_oom_killer_is_named",
        signals_vm::userspace_oom_killer_is_named,
    ),
];

/// The memory sampler against real kills (see `memory.rs`,
/// `memory_edges.rs`): its cgroup files, `memory.stat` fields and PSI differ
/// between cgroup v1 and v2 and between kernels, not between attach modes,
/// so one raw mode per kernel runs them. A pod's memcg holds no process
/// itself: on v2 it is found by `populated` in `cgroup.events`, on v1 by
/// its child's `cgroup.procs`. The other memory scenarios (the slow and
/// fast leaks, sampling off) add rates, not kernel differences: host only.
const MEMORY: &[Scenario] = &[
    ("leak_is_a_leak", memory::leak_is_a_leak),
    (
        "spike_after_idling_is_a_spike",
        memory::spike_after_idling_is_a_spike,
    ),
    ("tmpfs_fill_is_shmem", memory::tmpfs_fill_is_shmem),
    (
        "page_cache_is_reclaimed_not_killed",
        memory_edges::page_cache_is_reclaimed_not_killed,
    ),
    (
        "born_and_killed_between_samples_is_unknown",
        memory::born_and_killed_between_samples_is_unknown,
    ),
    (
        "pod_limit_leak_shows_the_pods_memory",
        memory::pod_limit_leak_shows_the_pods_memory,
    ),
    (
        "steady_victim_of_a_neighbours_spike",
        memory_edges::steady_victim_of_a_neighbours_spike,
    ),
    // v1: oom_kill_disable 1; v2 (no such switch): its task at adj -1000.
    (
        "stall_is_reported_from_start_to_end",
        stall::stall_is_reported_from_start_to_end,
    ),
];

/// `oomtrace rank`'s prediction against the kernel's choice (see
/// `rank.rs`): the badness arithmetic and the memcg's totalpages differ
/// between cgroup versions, not between attach modes, so one raw mode per
/// kernel runs them. adj -1000 can be set only in the VMs.
const RANK: &[Scenario] = &[
    (
        "rank_predicts_adj_over_size",
        rank::rank_predicts_adj_over_size,
    ),
    ("rank_predicts_a_near_tie", rank::rank_predicts_a_near_tie),
    ("rank_skips_adj_min", rank::rank_skips_adj_min),
];

/// Cgroup paths at the limits of the kernel's walks (see `paths.rs`). The
/// walks are the same in every raw mode; `oom.memcg_path` is not (the
/// hook's `oc->memcg`, or derived from the levels), so they run with
/// `oom_kill_process` hooked and without.
const PATHS: &[Scenario] = &[
    (
        "cgroup_depth_at_the_limit",
        paths::cgroup_depth_at_the_limit,
    ),
    (
        "cgroup_depth_past_the_limit",
        paths::cgroup_depth_past_the_limit,
    ),
    (
        "cgroup_depth_fifteen_and_sixteen",
        paths::cgroup_depth_fifteen_and_sixteen,
    ),
    (
        "cgroup_names_of_255_bytes",
        paths::cgroup_names_of_255_bytes,
    ),
    ("cgroup_path_at_path_max", paths::cgroup_path_at_path_max),
    (
        "cgroup_path_past_path_max",
        paths::cgroup_path_past_path_max,
    ),
    ("cgroup_name_not_utf8", paths::cgroup_name_not_utf8),
    (
        "cgroup_past_the_limit_below_its_memcg",
        paths::cgroup_past_the_limit_below_its_memcg,
    ),
];

/// Scenarios that need cgroup v2 (n/a on a v1 host).
const V2_ONLY: &[&str] = &[
    "oom_group_takes_the_container",
    "cgroup_past_the_limit_below_its_memcg",
];

/// Scenarios that run only inside the VMs (`signals_vm::in_vm`), where the
/// whole machine is theirs: n/a on the host.
const VM_ONLY: &[&str] = &["userspace_oom_killer_is_named"];

/// Scenarios that set a negative oom_score_adj, which needs
/// CAP_SYS_RESOURCE: the VMs have it, the host's root here does not.
const NEEDS_NEGATIVE_ADJ: &[&str] = &["rank_skips_adj_min"];

/// Scenarios that need a file on a disk (n/a in the VMs): there every file
/// system is in RAM (the initramfs, tmpfs), whose pages are not page cache
/// a reader is charged for and reclaim can drop.
const NEEDS_DISK: &[&str] = &["page_cache_is_reclaimed_not_killed"];
const NEEDS_DISK_WHY: &str = "needs a file on a disk; the VM's file systems are all in RAM";

/// Scenarios that need cgroup v1 (n/a on a v2 machine): the v1 freezer
/// holds a task that got SIGKILL, v2's lets it die.
const V1_ONLY: &[&str] = &["marked_while_dying_is_not_an_oom_kill"];

pub struct Mode {
    pub name: &'static str,
    /// Flags every `oomtrace run` gets in this mode.
    pub flags: &'static [&'static str],
    /// (probe, attach mode) pairs that must attach for the mode to exist here.
    pub requires: &'static [(&'static str, &'static str)],
    /// Lists of scenarios, run in order.
    pub scenarios: &'static [&'static [Scenario]],
}

pub const MODES: &[Mode] = &[
    Mode {
        name: "raw+fentry",
        flags: &["--victim-probe", "raw", "--oom-kill-probe", "fentry"],
        requires: &[
            ("mark_victim", "raw_tracepoint"),
            ("oom_kill_process", "fentry"),
        ],
        scenarios: &[KILLS, PATHS],
    },
    Mode {
        name: "raw+kprobe",
        flags: &["--victim-probe", "raw", "--oom-kill-probe", "kprobe"],
        requires: &[
            ("mark_victim", "raw_tracepoint"),
            ("oom_kill_process", "kprobe"),
        ],
        scenarios: &[KILLS],
    },
    Mode {
        name: "raw+off",
        flags: &["--victim-probe", "raw", "--oom-kill-probe", "off"],
        requires: &[("mark_victim", "raw_tracepoint")],
        scenarios: &[KILLS, EXIT_PATHS, PATHS, SIGNALS, COUNTERS, MEMORY, RANK],
    },
    Mode {
        // The scenario itself runs `--victim-probe tracepoint` (with
        // oom_kill_process on auto) and `--no-btf`.
        name: "tracepoint",
        flags: &[],
        requires: &[("mark_victim", "tracepoint")],
        scenarios: &[&[(
            "classic_tracepoint_modes",
            operations::classic_tracepoint_modes,
        )]],
    },
];

#[derive(Default)]
pub struct Totals {
    pub pass: u32,
    pub fail: u32,
    pub na: u32,
}

/// Whether `mode` attaches here: None if it does, else why not.
fn unavailable(env: &Env, mode: &Mode) -> Option<String> {
    let mut check = Command::new(&env.oomtrace);
    check.args(["check", "--json"]);
    match mode
        .requires
        .iter()
        .find(|(probe, _)| *probe == "mark_victim")
    {
        Some((_, "tracepoint")) => check.args(["--victim-probe", "tracepoint"]),
        _ => check.args(mode.flags),
    };
    let output = match check.output() {
        Ok(output) => output,
        Err(e) => return Some(format!("cannot run oomtrace check: {e}")),
    };
    let Ok(start) = serde_json::from_slice::<Value>(&output.stdout) else {
        let text = String::from_utf8_lossy(&output.stdout);
        return Some(format!(
            "oomtrace check: {}",
            text.lines().last().unwrap_or("")
        ));
    };
    for (probe, wanted) in mode.requires {
        let status = start["probes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == *probe));
        let Some(status) = status else {
            return Some(format!("no {probe} in the start record"));
        };
        if status["mode"] != *wanted {
            let why = status["attempts"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["mode"] == *wanted))
                .and_then(|a| a["error"].as_str())
                .unwrap_or("not attached");
            return Some(format!("{probe} {wanted}: {why}"));
        }
    }
    None
}

/// Runs the matrix and prints its lines: every mode, or `only` that one;
/// every scenario, or only those named in `scenario` (comma-separated).
pub fn run(base: &Env, only: Option<&str>, scenario: Option<&str>) -> Totals {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cgroup = match cgroup::memory_mount().0 {
        cgroup::Version::V1 => "v1",
        cgroup::Version::V2 => "v2",
    };
    let mut totals = Totals::default();
    for mode in MODES.iter().filter(|m| only.is_none_or(|o| o == m.name)) {
        let env = Env {
            collector_args: mode.flags.iter().map(|s| s.to_string()).collect(),
            ..base.clone()
        };
        let line = |scenario: &str, result: &str, secs: f64, why: &str| {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" why={}", why.replace('\n', " "))
            };
            println!(
                "OOMTRACE-MATRIX kernel={kernel} cgroup={cgroup} mode={} scenario={scenario} \
                 result={result} secs={secs:.1}{why}",
                mode.name
            );
        };
        if let Some(why) = unavailable(&env, mode) {
            line("-", "n/a", 0.0, &why);
            totals.na += 1;
            continue;
        }
        let chosen = mode.scenarios.iter().copied().flatten();
        let wanted = |name: &str| scenario.is_none_or(|s| s.split(',').any(|s| s == name));
        for (name, run) in chosen.filter(|(name, _)| wanted(name)) {
            if VM_ONLY.contains(name) && !signals_vm::in_vm() {
                line(name, "n/a", 0.0, signals_vm::VM_ONLY_WHY);
                totals.na += 1;
                continue;
            }
            if NEEDS_NEGATIVE_ADJ.contains(name) && !signals_vm::in_vm() {
                line(
                    name,
                    "n/a",
                    0.0,
                    "sets adj -1000: the VMs only (CAP_SYS_RESOURCE)",
                );
                totals.na += 1;
                continue;
            }
            if NEEDS_DISK.contains(name) && signals_vm::in_vm() {
                line(name, "n/a", 0.0, NEEDS_DISK_WHY);
                totals.na += 1;
                continue;
            }
            if cgroup == "v1" && V2_ONLY.contains(name) {
                line(name, "n/a", 0.0, "needs cgroup v2");
                totals.na += 1;
                continue;
            }
            if cgroup == "v2" && V1_ONLY.contains(name) {
                line(name, "n/a", 0.0, "needs cgroup v1");
                totals.na += 1;
                continue;
            }
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&env)));
            let secs = started.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => {
                    line(name, "pass", secs, "");
                    totals.pass += 1;
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    // The assertion and its left/right values, on one line.
                    let first: String = why
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                        .chars()
                        .take(800)
                        .collect();
                    line(name, "fail", secs, &first);
                    totals.fail += 1;
                }
            }
        }
    }
    println!(
        "OOMTRACE-MATRIX-DONE pass={} fail={} na={}",
        totals.pass, totals.fail, totals.na
    );
    totals
}
