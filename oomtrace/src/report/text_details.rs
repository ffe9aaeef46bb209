//! The text report after its first screen: every subject in full, the
//! child kills, node-wide OOMs, each node's collector, and the input.

use std::fmt::Write as _;

use oomtrace_record::text::human_bytes;

use super::{
    model::{Report, Subject},
    text::{short_time, span},
};

fn subject(out: &mut String, s: &Subject) {
    let _ = writeln!(out, "{} ({:?})", s.name, s.kind);
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(out, "  {name:<14} {value}");
        }
    };
    field("nodes", s.nodes.join(", "));
    field("containers", s.container_ids.join(", "));
    field("image", s.image.clone().unwrap_or_default());
    field("qos", s.qos.clone().unwrap_or_default());
    field("cgroup", s.cgroup.clone().unwrap_or_default());
    let c = &s.causes;
    field(
        "deaths",
        format!(
            "{} kernel OOM ({} memcg, {} node-wide), {} userspace OOM killer, {} runtime stop, {} other SIGKILL",
            s.kills,
            c.kernel_oom_memcg,
            c.kernel_oom_node,
            c.userspace_oom_killer,
            c.runtime_stop,
            c.other_sigkill
        ),
    );
    field(
        "container",
        format!(
            "{} died with its victim, {} child kills it survived",
            s.container_died, s.child_killed
        ),
    );
    if let (Some(a), Some(b)) = (&s.first, &s.last) {
        field(
            "first / last",
            format!("{} / {}", short_time(a), short_time(b)),
        );
    }
    field("victims", s.victims.join(", "));
    field("triggers", s.triggers.join(", "));
    if let Some(limit) = s.limit_bytes {
        field(
            "limit",
            format!(
                "{} ({} scope, memcg {})",
                human_bytes(limit),
                s.limit_scope.as_deref().unwrap_or("?"),
                s.limit_memcg.as_deref().unwrap_or("?")
            ),
        );
    }
    field(
        "max RSS",
        s.max_rss_bytes.map(human_bytes).unwrap_or_default(),
    );
    field(
        "working set",
        s.max_working_set_bytes.map(human_bytes).unwrap_or_default(),
    );
    field("growth", s.growth.clone());
    if let Some(l) = &s.crash_loop {
        let gaps: Vec<String> = l.intervals_s.iter().map(|i| span(*i)).collect();
        field(
            "crash loop",
            format!(
                "{} kills from {} to {}, apart: {}",
                l.kills,
                short_time(&l.from),
                short_time(&l.to),
                gaps.join(", ")
            ),
        );
    }
    field("advice", s.advice.text.clone());
}

pub fn details(r: &Report) -> String {
    let mut out = String::from("Details\n\n");
    for s in &r.subjects {
        subject(&mut out, s);
        out.push('\n');
    }
    if !r.child_kills.is_empty() {
        out.push_str(
            "Child killed, container kept running (not shown by Kubernetes or the runtime):\n",
        );
        for k in &r.child_kills {
            let _ = writeln!(
                out,
                "  {} {} pid {} ({}) on {}",
                short_time(&k.time),
                k.subject,
                k.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                k.comm.as_deref().unwrap_or("?"),
                k.node.as_deref().unwrap_or("?")
            );
        }
        out.push('\n');
    }
    if !r.node_ooms.is_empty() {
        out.push_str("Node-wide OOM kills (no cgroup limit fired; the node ran out):\n");
        for k in &r.node_ooms {
            let _ = writeln!(
                out,
                "  {} {} {} ({}) qos {}",
                short_time(&k.time),
                k.node.as_deref().unwrap_or("?"),
                k.subject,
                k.comm.as_deref().unwrap_or("?"),
                k.qos.as_deref().unwrap_or("-")
            );
        }
        out.push('\n');
    }
    out.push_str("Collectors:\n");
    for n in &r.nodes {
        let _ = writeln!(
            out,
            "  {}: {} boots, {} runs ({} without stop), {} OOM kills ({} node-wide), lost {} kills + {} other, {} late exits, {} exits never seen, {} OOM stalls",
            n.hostname,
            n.boots,
            n.runs,
            n.runs_without_stop,
            n.oom_kills,
            n.node_ooms,
            n.lost_kills,
            n.lost_other,
            n.late_exits,
            n.exits_unseen,
            n.oom_stalls
        );
        for g in &n.gaps {
            let _ = writeln!(
                out,
                "    gap {} to {} ({}, {})",
                short_time(&g.from),
                short_time(&g.to),
                span(g.seconds),
                g.kind
            );
        }
    }
    let i = &r.input;
    let _ = writeln!(
        out,
        "\nInput: {} sources, {} lines, {} records ({} duplicates, {} filtered out), {} other lines, {} malformed, {} too long, {} read errors, {} of a newer schema",
        i.sources,
        i.lines,
        i.records,
        i.duplicates,
        i.filtered_out,
        i.other_lines,
        i.malformed,
        i.too_long,
        i.read_errors,
        i.newer_schema
    );
    for (kind, n) in &i.unknown_types {
        let _ = writeln!(
            out,
            "  {n} records of type {kind}, unknown to this oomtrace"
        );
    }
    if r.subjects_dropped > 0 {
        let _ = writeln!(
            out,
            "  {} kills of subjects past the cap, counted in the totals only",
            r.subjects_dropped
        );
    }
    out
}
