//! `oomtrace check`: the host facts and the attach plan, found by really
//! loading and attaching (then detaching) every probe. Exits non-zero when no
//! OOM kill could be traced.

use std::{fmt::Write as _, process::ExitCode};

use super::ProbeArgs;
use crate::{
    host::{HostFacts, privileges},
    probes,
    schema::{CollectorStatus, SelfSetting, Start},
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Print the plan as the `start` record `run` would write, in JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let host = HostFacts::gather();
    if let Err(missing) = privileges::check() {
        println!("{}", host_summary(&host));
        println!("\nverdict: cannot trace: {missing}");
        return Ok(ExitCode::FAILURE);
    }
    super::raise_memlock_limit();
    let tracer = match probes::attach(&args.probes.options(), &host) {
        Ok(tracer) => tracer,
        Err(error) => {
            println!("{}", host_summary(&host));
            println!("\nverdict: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let collector = CollectorStatus {
        pid: std::process::id(),
        exit_wait_ms: 0,
        // Try what `run` would: tells whether the protection will hold here.
        oom_score_adj: super::protect_self(-1000),
        nice: super::prioritize_self(-10),
    };
    let start = super::start_record(host, &tracer, collector, Vec::new());
    drop(tracer); // detaches everything
    if args.json {
        println!("{}", serde_json::to_string_pretty(&start)?);
    } else {
        print!("{}", report(&start));
    }
    Ok(ExitCode::SUCCESS)
}

fn host_summary(host: &HostFacts) -> String {
    let memory = match &host.memory_controller {
        Some(m) => format!("memory controller on cgroup v{} at {}", m.version, m.mount),
        None => "no memory controller mounted".into(),
    };
    format!(
        "host      {} (Linux {})\ncgroups   {:?}; {memory}\nBTF       {}\ntracefs   {}",
        host.hostname,
        host.kernel_release,
        host.cgroup_mode,
        if host.btf {
            crate::host::DEFAULT_BTF
        } else {
            "absent"
        },
        host.tracefs
            .as_deref()
            .unwrap_or("not mounted (mounted on demand)"),
    )
}

/// What each attached (or missing) probe means for the record's fields.
const CONSEQUENCES: [(&str, &str, &str); 3] = [
    (
        "mark_victim",
        "one record per kill",
        "no kill can be recorded",
    ),
    (
        "oom_kill_process",
        "oom.constraint, oom.memcg_path, oom.points, oom.totalpages",
        "oom.constraint, points, totalpages, chosen_pid are null; oom.memcg_path \
         is derived from the memcg usage read at the kill (memcg_source usage_at_limit)",
    ),
    (
        "process_exit",
        "exit.code, exit.signal, exit.delay_ms",
        "exit.observed is always false",
    ),
];

fn report(start: &Start) -> String {
    let mut out = host_summary(&start.host);
    out.push_str("\n\nattach plan\n");
    for probe in &start.probes {
        let (gives, without) = CONSEQUENCES
            .iter()
            .find(|(name, ..)| *name == probe.name)
            .map(|(_, g, w)| (*g, *w))
            .unwrap_or(("", ""));
        match &probe.mode {
            Some(mode) => {
                let _ = writeln!(out, "  {:<17} {:<15} gives {gives}", probe.name, mode);
            }
            None => {
                let _ = writeln!(out, "  {:<17} {:<15} {without}", probe.name, "NOT ATTACHED");
            }
        }
        for attempt in &probe.attempts {
            if let Some(error) = &attempt.error {
                let _ = writeln!(out, "      {} failed: {error}", attempt.mode);
            }
        }
    }
    let me = &start.collector;
    out.push_str("\ncollector (what `run` will get)\n");
    let setting = |name: &str, s: &SelfSetting| {
        let now = s.applied.map_or("unknown".into(), |v| v.to_string());
        match &s.error {
            None => format!("  {name:<17} {} (now {now})\n", s.requested),
            Some(e) => format!("  {name:<17} {} REFUSED, stays {now}: {e}\n", s.requested),
        }
    };
    out.push_str(&setting("oom_score_adj", &me.oom_score_adj));
    out.push_str(&setting("nice", &me.nice));
    if !start.notes.is_empty() {
        out.push_str("\nnotes\n");
        for note in &start.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    let mark = start.probes.iter().find(|p| p.name == "mark_victim");
    let _ = writeln!(
        out,
        "\nverdict: OOM kills will be traced (mark_victim via {})",
        mark.and_then(|p| p.mode.as_deref()).unwrap_or("?")
    );
    out
}
