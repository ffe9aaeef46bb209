//! The report as text. The first screen (80 × 24) answers "what happened
//! and what do I do": the totals, then each subject with its kills and one
//! line of advice, then what may be missing (gaps, losses). Details follow.

use std::fmt::Write as _;

use oomtrace_record::text::human_bytes;

use super::model::{Causes, Report, Subject};

const WIDTH: usize = 80;
const SCREEN: usize = 24;

/// `2026-12-06 10:00:01Z` from an RFC 3339 UTC time; other text as it is.
pub fn short_time(time: &str) -> String {
    let b = time.as_bytes();
    if b.len() >= 19 && b[10] == b'T' && time.ends_with('Z') {
        format!("{} {}Z", &time[..10], &time[11..19])
    } else {
        time.to_string()
    }
}

/// `45s`, `4m10s`, `2h3m`, `3d4h`.
pub fn span(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `text` cut into lines of at most `width` characters, at spaces.
fn wrap(text: &str, indent: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = indent.to_string();
    for word in text.split(' ') {
        if line.len() > indent.len() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.len() > indent.len() {
        lines.push(line);
    }
    lines
}

fn causes_line(c: &Causes) -> String {
    let mut parts = Vec::new();
    let kernel = c.kernel_oom_memcg + c.kernel_oom_node;
    if kernel > 0 {
        parts.push(format!(
            "kernel OOM {kernel} ({} memcg, {} node-wide)",
            c.kernel_oom_memcg, c.kernel_oom_node
        ));
    }
    for (n, what) in [
        (c.userspace_oom_killer, "userspace OOM killer"),
        (c.runtime_stop, "runtime stop"),
        (c.other_sigkill, "other SIGKILL"),
    ] {
        if n > 0 {
            parts.push(format!("{what} {n}"));
        }
    }
    if parts.is_empty() {
        "no SIGKILL deaths".to_string()
    } else {
        parts.join(", ")
    }
}

/// The subject's headline: name, deaths, and its state.
fn headline(s: &Subject) -> String {
    let deaths = s.causes.total();
    let mut tags = Vec::new();
    if let Some(l) = &s.crash_loop {
        let taken = super::analysis::seconds(&l.to)
            .zip(super::analysis::seconds(&l.from))
            .map(|(b, a)| span(b - a))
            .unwrap_or_default();
        tags.push(format!("CRASH LOOP: {} in {taken}", l.kills));
    }
    if s.child_killed > 0 {
        tags.push(if s.child_killed == deaths {
            "child killed, container kept running".to_string()
        } else {
            format!("{} child kills, container kept running", s.child_killed)
        });
    }
    if s.container_died > 0 && s.crash_loop.is_none() {
        tags.push("container died".to_string());
    }
    let mark = if s.crash_loop.is_some() { '!' } else { '*' };
    let count = plural(deaths, "kill", "kills");
    let mut line = format!("{mark} {}: {count}", s.name);
    if !tags.is_empty() {
        let _ = write!(line, ", {}", tags.join(", "));
    }
    line
}

fn evidence(s: &Subject) -> String {
    let mut parts = Vec::new();
    if s.growth != "unknown" {
        let slope = s
            .growth_slope_bytes_per_s
            .filter(|v| *v > 0.0 && v.is_finite() && s.growth == "leak")
            .map(|v| format!(" {}/s", human_bytes(v as u64)))
            .unwrap_or_default();
        parts.push(format!("{}{slope}", s.growth));
    }
    if let Some(limit) = s.limit_bytes {
        let scope = s.limit_scope.as_deref().unwrap_or("?");
        parts.push(format!("{scope} limit {}", human_bytes(limit)));
    }
    if let Some(victim) = s.victims.first() {
        parts.push(format!("victim {victim}"));
    }
    if let Some(last) = &s.last {
        // `12-05 02:09`: the year is in the header.
        let t = short_time(last);
        parts.push(format!("last {}", t.get(5..16).unwrap_or(&t)));
    }
    parts.join(", ")
}

/// Lines about what may be missing from the story.
fn watch_out(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for n in &r.nodes {
        let mut parts = Vec::new();
        if n.gaps_total > 0 {
            parts.push(format!(
                "{} ({})",
                plural(n.gaps_total, "unwatched gap", "unwatched gaps"),
                span(n.gap_seconds)
            ));
        }
        if n.lost_kills > 0 {
            parts.push(format!("{} lost kill records", n.lost_kills));
        }
        if n.lost_other > 0 {
            parts.push(format!("{} other losses", n.lost_other));
        }
        if n.runs > 1 {
            parts.push(format!("{} collector restarts", n.runs - 1));
        }
        if n.late_exits > 0 {
            parts.push(format!("{} late exits", n.late_exits));
        }
        if n.oom_stalls > 0 {
            parts.push(format!(
                "{} OOM stalls (nobody killed, tasks hung at a limit)",
                n.oom_stalls
            ));
        }
        if !parts.is_empty() {
            out.push(format!("node {}: {}", n.hostname, parts.join(", ")));
        }
    }
    if r.nodes.is_empty() {
        out.push("no collector records at all: nothing says whether anything watched".into());
    }
    let i = &r.input;
    let skipped = i.malformed + i.too_long + i.read_errors;
    if skipped > 0 {
        out.push(format!(
            "{skipped} bad input lines skipped ({} malformed, {} too long, {} read errors)",
            i.malformed, i.too_long, i.read_errors
        ));
    }
    out
}

/// The whole text report.
pub fn render(r: &Report) -> String {
    let mut screen: Vec<String> = Vec::new();
    let deaths = r.causes.total();
    let nodes = r.nodes.len() as u64;
    let period = match (&r.first, &r.last) {
        (Some(a), Some(b)) => format!(", {} to {}", short_time(a), short_time(b)),
        _ => String::new(),
    };
    screen.push(format!(
        "{} on {}{period}",
        plural(deaths, "SIGKILL death", "SIGKILL deaths"),
        plural(nodes, "node", "nodes")
    ));
    screen.push(format!("  by cause: {}", causes_line(&r.causes)));
    let warnings = watch_out(r);
    screen.push(String::new());
    // What the subjects leave of the screen: the warnings and a "more"
    // line come after them.
    let tail = 1 + if warnings.is_empty() {
        0
    } else {
        1 + warnings.len().min(4)
    };
    let room = SCREEN.saturating_sub(tail);
    let mut shown = 0;
    for s in &r.subjects {
        let mut block = wrap(&headline(s), "", WIDTH);
        block.extend(wrap(&evidence(s), "    ", WIDTH));
        block.extend(wrap(&format!("-> {}", s.advice.text), "    ", WIDTH));
        if screen.len() + block.len() > room && shown > 0 {
            break;
        }
        screen.extend(block);
        shown += 1;
    }
    if r.subjects.is_empty() {
        screen.push("No kills in these records.".to_string());
    } else if shown < r.subjects.len() {
        screen.push(format!("  ... {} more below", r.subjects.len() - shown));
    }
    if !warnings.is_empty() {
        screen.push("Not watched or not kept:".to_string());
        for w in warnings.iter().take(4) {
            screen.extend(wrap(w, "  ", WIDTH));
        }
    }
    let mut out = screen.join("\n");
    out.push_str("\n\n");
    out.push_str(&super::text_details::details(r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_spans_and_wrapping() {
        assert_eq!(
            short_time("2026-12-06T10:00:01.123456789Z"),
            "2026-12-06 10:00:01Z"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
        assert_eq!(span(45.2), "45s");
        assert_eq!(span(250.0), "4m10s");
        assert_eq!(span(7380.0), "2h03m");
        let lines = wrap(&"word ".repeat(40), "  ", 30);
        assert!(lines.iter().all(|l| l.len() <= 30 && l.starts_with("  w")));
        assert_eq!(lines.join(" ").split_whitespace().count(), 40);
    }
}
