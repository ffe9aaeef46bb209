//! `oomtrace check`: the host facts and the attach plan, found by really
//! loading and attaching (then detaching) every probe. Exits non-zero when no
//! OOM kill could be traced.

use std::{fmt::Write as _, path::Path, process::ExitCode};

use oomtrace_record::{
    CollectorStatus, Hook, HostFacts, Record, SelfSetting, Start, text::spelled,
};

use super::ProbeArgs;
use crate::{
    kernel::{
        attach::{self, BtfSource},
        btf, hooks,
        host::{self, DEFAULT_BTF, privileges},
        promises::{self, Promises},
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
    let options = args.probes.options();
    let btf = btf_status(&options.btf);
    if let Err(missing) = privileges::check() {
        println!("{}", host_summary(&facts, &btf));
        println!("\nverdict: cannot trace: {missing}");
        return Ok(ExitCode::FAILURE);
    }
    host::raise_memlock_limit();
    let tracer = match attach::attach(&options, &facts) {
        Ok(tracer) => tracer,
        Err(error) => {
            println!("{}", host_summary(&facts, &btf));
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
        // Tagged as `run` tags it, so that it validates against `oomtrace
        // schema` and reads back through oomtrace-record.
        let record = Record::Start(Box::new(start));
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", report(&start, &btf, &tracer.promises));
    }
    Ok(ExitCode::SUCCESS)
}

/// The header's BTF line: the file offsets come from, or why none is used.
/// Opened here rather than taken from the host facts, which only say
/// whether the default file exists: a file that exists but cannot be read
/// (hidden from this user, say) must not be listed as the BTF in use.
fn btf_status(source: &BtfSource) -> String {
    let path = match source {
        BtfSource::Disabled => return "not used (--no-btf)".into(),
        BtfSource::File(path) => path.as_path(),
        BtfSource::Default => Path::new(DEFAULT_BTF),
    };
    match btf::open(path) {
        Ok(_) => path.display().to_string(),
        Err(error) => format!("none usable: {}", error.cause()),
    }
}

fn host_summary(host: &HostFacts, btf: &str) -> String {
    let memory = match &host.memory_controller {
        Some(m) => format!("memory controller on cgroup v{} at {}", m.version, m.mount),
        None => "no memory controller mounted".into(),
    };
    format!(
        "host      {} (Linux {})\ncgroups   {}; {memory}\nBTF       {btf}\ntracefs   {}",
        host.hostname,
        host.kernel_release,
        spelled(host.cgroup_mode),
        host.tracefs.as_deref().unwrap_or(
            "not mounted (a classic tracepoint mounts it while attaching, then unmounts it)"
        ),
    )
}

fn report(start: &Start, btf: &str, promised: &[(Hook, Promises)]) -> String {
    let mut out = host_summary(&start.host, btf);
    out.push_str(
        "\n\nattach plan (each field after `gives:` is non-null in every oom_kill record)\n",
    );
    for probe in &start.probes {
        let Some(spec) = hooks::spec(probe.name) else {
            continue;
        };
        let name = spelled(probe.name);
        match probe.mode {
            Some(mode) => {
                let _ = writeln!(out, "  {name:<17} {:<15} {}", spelled(mode), spec.purpose);
                let given = promised
                    .iter()
                    .find(|(hook, _)| *hook == probe.name)
                    .map(|(_, p)| p.given.join(", "))
                    .unwrap_or_default();
                let _ = writeln!(out, "      gives: {given}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {name:<17} {:<15} null: {}; {}",
                    "NOT ATTACHED",
                    promises::all_fields(spec).join(", "),
                    spec.without
                );
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
