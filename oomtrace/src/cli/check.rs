//! `oomtrace check`: the host facts and the attach plan, found by really
//! loading and attaching (then detaching) every probe. Exits non-zero when no
//! OOM kill could be traced.

use std::{fmt::Write as _, process::ExitCode};

use oomtrace_record::{CollectorStatus, HostFacts, SelfSetting, Start, text::spelled};

use super::ProbeArgs;
use crate::{
    kernel::{
        attach, hooks,
        host::{self, DEFAULT_BTF, privileges},
    },
    pipeline::convert,
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
    let facts = host::gather();
    if let Err(missing) = privileges::check() {
        println!("{}", host_summary(&facts));
        println!("\nverdict: cannot trace: {missing}");
        return Ok(ExitCode::FAILURE);
    }
    host::raise_memlock_limit();
    let tracer = match attach::attach(&args.probes.options(), &facts) {
        Ok(tracer) => tracer,
        Err(error) => {
            println!("{}", host_summary(&facts));
            println!("\nverdict: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let collector = CollectorStatus {
        kernel_log: None,
        pid: std::process::id(),
        exit_wait_ms: 0,
        exit_retention_ms: None,
        // Try what `run` would: tells whether the protection will hold here.
        oom_score_adj: host::protect_self(-1000),
        nice: host::prioritize_self(-10),
    };
    let origin = host::origin(&facts);
    let start = convert::start(&origin, facts, tracer.probes, collector, tracer.notes);
    drop(tracer.ebpf); // detaches everything
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
        "host      {} (Linux {})\ncgroups   {}; {memory}\nBTF       {}\ntracefs   {}",
        host.hostname,
        host.kernel_release,
        spelled(host.cgroup_mode),
        if host.btf { DEFAULT_BTF } else { "absent" },
        host.tracefs
            .as_deref()
            .unwrap_or("not mounted (mounted on demand)"),
    )
}

fn report(start: &Start) -> String {
    let mut out = host_summary(&start.host);
    out.push_str("\n\nattach plan\n");
    for probe in &start.probes {
        let (gives, without) =
            hooks::spec(probe.name).map_or(("", ""), |spec| (spec.gives, spec.without));
        let name = spelled(probe.name);
        match probe.mode {
            Some(mode) => {
                let _ = writeln!(out, "  {name:<17} {:<15} gives {gives}", spelled(mode));
            }
            None => {
                let _ = writeln!(out, "  {name:<17} {:<15} {without}", "NOT ATTACHED");
            }
        }
        for attempt in &probe.attempts {
            if let Some(error) = &attempt.error {
                let _ = writeln!(out, "      {} failed: {error}", spelled(attempt.mode));
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
    let mark = start
        .probes
        .iter()
        .find(|p| p.name == oomtrace_record::Hook::MarkVictim);
    let _ = writeln!(
        out,
        "\nverdict: OOM kills will be traced (mark_victim via {})",
        mark.and_then(|p| p.mode).map_or("?".into(), spelled)
    );
    out
}
