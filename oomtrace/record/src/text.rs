//! One readable line per record, for `--format text`: like dmesg's line,
//! but complete.
//!
//! Every string that comes from the kernel or the filesystem (task names,
//! cgroup paths, pod and unit names, the hostname) can hold anything a
//! process or a container runtime put there, control characters included.
//! They are escaped as JSON escapes strings, plus what a terminal acts on
//! and JSON leaves alone (DEL, C1 controls like CSI U+009B, the line and
//! paragraph separators, bidirectional overrides), so that no name can
//! forge a second line or steer the terminal. Task names are always
//! quoted; the others are quoted only when they hold anything beyond plain
//! printable ASCII, so that ordinary paths read as they are.

use std::fmt::Write as _;

use crate::{Container, ContainerExit, Exit, K8s, Memcg, OomKill, Record, SignalKill};

/// The record as one line, without its newline.
pub fn line(record: &Record) -> String {
    match record {
        Record::Start(s) => {
            let probes: Vec<String> = s
                .probes
                .iter()
                .map(|p| match p.mode {
                    Some(mode) => format!("{} via {}", spelled(p.name), spelled(mode)),
                    None => format!("{} not attached", spelled(p.name)),
                })
                .collect();
            format!(
                "{} oomtrace {} tracing on {} (Linux {}, cgroup {}): {}",
                s.time,
                s.version,
                plain(&s.host.hostname),
                plain(&s.host.kernel_release),
                spelled(s.host.cgroup_mode),
                probes.join(", ")
            )
        }
        Record::OomKill(k) => kill_line(k),
        Record::LateExit(l) => format!(
            "{} late exit of OOM kill #{}: pid {}{}",
            l.time,
            l.seq,
            opt(l.pid.or(l.tid)),
            exit_text(&l.exit)
        ),
        Record::SignalKill(s) => signal_kill_line(s),
        Record::ContainerExit(c) => container_exit_line(c),
        Record::OomStall(s) => s.text_line(),
        Record::Lost(l) => format!(
            "{} LOST {} kill records and {} exit records (ring buffer full); {} signal kill \
             records (ring buffer past its share for them); {} victims untracked; {} kernel \
             records and {} output records dropped by the collector",
            l.time,
            l.kills,
            l.exits,
            l.signal_kills,
            l.untracked_victims,
            l.events_dropped,
            l.records_dropped
        ),
        Record::Heartbeat(h) => format!(
            "{} oomtrace alive: {} kills, {} kills lost, next heartbeat in {}s",
            h.time,
            h.counters.kills,
            h.counters.lost_kills,
            h.interval_ms / 1000
        ),
        Record::Stop(s) => format!(
            "{} oomtrace stopped ({}): {} kills, {} exits observed, {} late exits, {} kills lost",
            s.time,
            spelled(s.reason),
            s.counters.kills,
            s.counters.exits_observed,
            s.counters.late_exits,
            s.counters.lost_kills
        ),
        Record::RankProcess(r) => r.text_line(),
        Record::RankMemcg(r) => r.text_line(),
        Record::Unknown => "record of an unknown type".into(),
    }
}

/// `1.5MiB`, `300.0KiB`, `0B`: sizes as `free -h` reads them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub(crate) fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

pub(crate) fn opt_bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), human_bytes)
}

/// `"name"`, escaped (see the module docs); `?` when unknown.
pub(crate) fn quoted(value: Option<&str>) -> String {
    value.map_or_else(|| "?".to_string(), escaped)
}

/// The value as it is when it is plain printable ASCII without quotes or
/// backslashes (a normal path or name), else quoted and escaped: a token
/// that starts with `"` is always a quoted one.
pub(crate) fn plain(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if bare {
        value.to_string()
    } else {
        escaped(value)
    }
}

/// `plain`, or `?` when unknown.
pub(crate) fn opt_plain(value: Option<&str>) -> String {
    value.map_or_else(|| "?".to_string(), plain)
}

/// A JSON string literal of `value` that also escapes, as `\uXXXX`, every
/// character a terminal may act on: C0 and C1 controls, DEL, U+2028/U+2029,
/// and the bidirectional formatting characters.
fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters that change how the text around them is shown: the line and
/// paragraph separators, and the bidirectional marks, embeddings, overrides
/// and isolates (U+200E/F, U+202A-U+202E, U+2066-U+2069).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// A closed set's value as the JSON spells it (`raw_tracepoint`,
/// `SIGTERM`): one spelling, the serde one.
pub fn spelled(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".into(),
    }
}

/// ` exit 137 (signal 9) after 4.5ms`, ` exit not observed`.
fn exit_text(exit: &Exit) -> String {
    match (exit.observed, exit.code) {
        (true, Some(code)) => {
            let mut text = format!(" exit {code}");
            if let Some(signal) = exit.signal {
                let _ = write!(text, " (signal {signal})");
            }
            let _ = write!(text, " after {}ms", opt(exit.delay_ms));
            text
        }
        (true, None) => format!(" exited after {}ms", opt(exit.delay_ms)),
        (false, _) => " exit not observed".into(),
    }
}

fn kill_line(k: &OomKill) -> String {
    let v = &k.victim;
    let mut line = format!(
        "{} OOM kill: pid {} {} adj {} rss anon {} file {} shmem {} vm {} uid {} cgroup {}",
        k.time,
        opt(v.pid),
        quoted(v.comm.as_deref()),
        opt(v.oom_score_adj),
        opt_bytes(v.rss.anon_bytes),
        opt_bytes(v.rss.file_bytes),
        opt_bytes(v.rss.shmem_bytes),
        opt_bytes(v.total_vm_bytes),
        opt(v.uid),
        opt_plain(v.cgroup.path.as_deref()),
    );
    line.push_str(&memcg_text(k.memcg.as_ref()));
    if let Some(memory) = &k.memory {
        line.push_str(&memory.growth_text());
    }
    if let Some(c) = k.oom.constraint {
        let _ = write!(line, " constraint {}", spelled(c));
    }
    if let Some(p) = &k.oom.memcg_path {
        let _ = write!(line, " limit-of {}", plain(p));
    }
    if let Some(scope) = k.oom.limit_scope {
        let _ = write!(line, " ({} limit)", spelled(scope));
    }
    line.push_str(&place_text(
        k.k8s.as_ref(),
        k.container.as_ref(),
        k.systemd_unit.as_deref(),
    ));
    line.push_str(&survival_text(v.container_init, k.container_survives));
    if k.oom.group_kill == Some(true) {
        line.push_str(" oom-group");
    }
    if k.oom.killed == Some(false) {
        match k.oom.signal_kill_seq {
            Some(seq) => {
                let _ = write!(
                    line,
                    " marked, not killed (already dying of signal kill #{seq})"
                );
            }
            None => line.push_str(" marked, not killed (already dying)"),
        }
    }
    let _ = write!(
        line,
        " trigger {} {}",
        opt(k.trigger.pid),
        quoted(k.trigger.comm.as_deref())
    );
    line.push_str(&exit_text(&k.exit));
    line
}

/// ` memcg 64.0MiB/max`: the usage and limit of the task's own memcg.
fn memcg_text(memcg: Option<&Memcg>) -> String {
    memcg.map_or_else(String::new, |m| {
        format!(
            " memcg {}/{}",
            human_bytes(m.usage_bytes),
            m.limit_bytes.map_or_else(|| "max".to_string(), human_bytes)
        )
    })
}

/// ` pod ns/name container c id 3f4e9a1c0b7d`, ` name web id 3f4e9a1c0b7d
/// image nginx:1.27`, ` unit nginx.service`.
pub(crate) fn place_text(
    k8s: Option<&K8s>,
    container: Option<&Container>,
    unit: Option<&str>,
) -> String {
    let mut text = String::new();
    if let Some(k8s) = k8s {
        let _ = write!(
            text,
            " pod {}/{} container {}",
            opt_plain(k8s.namespace.as_deref()),
            opt_plain(k8s.pod.as_deref()),
            opt_plain(k8s.container.as_deref()),
        );
    }
    if let Some(c) = container {
        // Names and images come from files a container's owner can shape
        // (`docker run --name`, an image reference): `plain` quotes and
        // escapes anything a terminal could act on.
        if let Some(name) = &c.name {
            let _ = write!(text, " name {}", plain(name));
        }
        // 12 hex digits, as `docker ps` and `crictl ps` show ids.
        let _ = write!(text, " id {}", plain(c.id.get(..12).unwrap_or(&c.id)));
        if let Some(image) = &c.image {
            let _ = write!(text, " image {}", plain(image));
        }
    } else if let Some(unit) = unit {
        let _ = write!(text, " unit {}", plain(unit));
    }
    text
}

/// ` container-init container-dies`, ` container-survives`.
fn survival_text(container_init: Option<bool>, survives: Option<bool>) -> String {
    let mut text = String::new();
    if container_init == Some(true) {
        text.push_str(" container-init");
    }
    match survives {
        Some(true) => text.push_str(" container-survives"),
        Some(false) => text.push_str(" container-dies"),
        None => {}
    }
    text
}

fn signal_kill_line(s: &SignalKill) -> String {
    let t = &s.target;
    let mut line = format!(
        "{} signal kill #{}: SIGKILL to pid {} {} adj {} uid {} cgroup {}",
        s.time,
        s.seq,
        opt(t.pid),
        quoted(t.comm.as_deref()),
        opt(t.oom_score_adj),
        opt(t.uid),
        opt_plain(t.cgroup.path.as_deref()),
    );
    line.push_str(&memcg_text(s.memcg.as_ref()));
    let _ = write!(
        line,
        " by {} {} ({}, {})",
        opt(s.sender.pid),
        quoted(s.sender.comm.as_deref()),
        spelled(s.sender.kind),
        spelled(s.sender.code),
    );
    if let Some(seq) = s.part_of_oom_kill {
        let _ = write!(line, " part of OOM kill #{seq}");
    }
    match &s.after_sigterm {
        Some(term) => {
            let _ = write!(
                line,
                " after SIGTERM by {} {} {}ms before",
                opt(term.sender_pid),
                quoted(term.sender_comm.as_deref()),
                term.ms_before,
            );
        }
        None => line.push_str(" without SIGTERM first"),
    }
    line.push_str(&place_text(
        s.k8s.as_ref(),
        s.container.as_ref(),
        s.systemd_unit.as_deref(),
    ));
    line.push_str(&survival_text(t.container_init, s.container_survives));
    line.push_str(&exit_text(&s.exit));
    line
}

fn container_exit_line(c: &ContainerExit) -> String {
    let mut line = format!(
        "{} container exit: pid {} {} cgroup {}",
        c.time,
        opt(c.pid),
        quoted(c.comm.as_deref()),
        opt_plain(c.cgroup.path.as_deref()),
    );
    line.push_str(&place_text(
        c.k8s.as_ref(),
        c.container.as_ref(),
        c.systemd_unit.as_deref(),
    ));
    let _ = write!(line, " cause {}", spelled(c.cause));
    if let Some(seq) = c.cause_seq {
        let _ = write!(line, " #{seq}");
    }
    if let Some(sender) = &c.sender {
        let _ = write!(
            line,
            " by {} {} ({}, {})",
            opt(sender.pid),
            quoted(sender.comm.as_deref()),
            spelled(sender.kind),
            spelled(sender.code),
        );
    }
    let _ = write!(line, " exit {}", opt(c.exit.code));
    if let Some(signal) = c.exit.signal {
        let _ = write!(line, " (signal {signal})");
    }
    let others = &c.other_oom_kills;
    let _ = write!(line, " other OOM kills {}", others.count);
    if !others.seqs.is_empty() {
        let seqs: Vec<String> = others.seqs.iter().map(|s| format!("#{s}")).collect();
        let _ = write!(line, " ({})", seqs.join(" "));
    }
    let _ = write!(line, " since {}", plain(&others.since));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_free_h() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(100 << 20), "100.0MiB");
    }

    fn blank_kill() -> OomKill {
        serde_json::from_value(serde_json::json!({
            "schema": 1, "seq": 0, "time": "t", "boot_ns": 0, "source": "raw_tracepoint",
            "victim": {"pid": null, "tid": null, "ns_pid": null, "container_init": null,
                       "comm": null, "comm_hex": null, "uid": null, "oom_score_adj": null,
                       "total_vm_bytes": null, "pgtables_bytes": null,
                       "rss": {"anon_bytes": null, "file_bytes": null, "shmem_bytes": null},
                       "cgroup": {"id": null, "path": null}},
            "trigger": {"pid": 1, "tid": 1, "comm": null, "comm_hex": null},
            "oom": {"constraint": null, "memcg_path": null, "points": null, "totalpages": null,
                    "chosen_pid": null, "memcg_source": null, "limit_scope": null},
            "memcg": null,
            "exit": {"observed": false, "code": null, "signal": null, "delay_ms": null},
            "container": null, "k8s": null, "systemd_unit": null, "container_survives": null
        }))
        .expect("valid oom_kill")
    }

    /// No byte a terminal acts on: C0/C1 controls and DEL.
    fn assert_inert(line: &str) {
        assert!(
            !line
                .chars()
                .any(|c| c.is_control() || is_invisible_format(c)),
            "{line:?}"
        );
    }

    #[test]
    fn a_hostile_comm_stays_on_one_text_line() {
        let mut kill = blank_kill();
        kill.victim.comm = Some("a\nb\"c".into());
        let line = kill_line(&kill);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#""a\nb\"c""#), "{line}");
        assert!(line.contains("exit not observed"));
    }

    #[test]
    fn a_marked_task_that_was_already_dying_is_not_called_killed() {
        let mut kill = blank_kill();
        assert!(!kill_line(&kill).contains("not killed"));
        kill.oom.killed = Some(true);
        kill.oom.group_kill = Some(true);
        let line = kill_line(&kill);
        assert!(
            !line.contains("not killed") && line.contains(" oom-group "),
            "{line}"
        );
        kill.oom.killed = Some(false);
        let line = kill_line(&kill);
        assert!(
            line.contains(" marked, not killed (already dying) "),
            "{line}"
        );
        kill.oom.signal_kill_seq = Some(4);
        let line = kill_line(&kill);
        assert!(
            line.contains(" marked, not killed (already dying of signal kill #4) trigger"),
            "{line}"
        );
    }

    #[test]
    fn every_name_from_the_kernel_or_the_filesystem_is_escaped() {
        let mut kill = blank_kill();
        let hostile = "/evil\u{1b}]0;pwned\u{7}\u{9b}31m\u{7f}\u{2028}\u{202e}x";
        kill.victim.cgroup.path = Some(hostile.into());
        kill.oom.memcg_path = Some(hostile.into());
        kill.systemd_unit = Some("a\u{1b}[2J.service".into());
        kill.trigger.comm = Some("\u{1b}[1A".into());
        let line = kill_line(&kill);
        assert_inert(&line);
        let quoted = r#""/evil\u001b]0;pwned\u0007\u009b31m\u007f\u2028\u202ex""#;
        assert!(line.contains(&format!("cgroup {quoted}")), "{line}");
        assert!(line.contains(&format!("limit-of {quoted}")), "{line}");
        assert!(line.contains(r#"unit "a\u001b[2J.service""#), "{line}");
        // The escaped form is a JSON string that gives the exact name back.
        let back: String = serde_json::from_str(quoted).expect("a JSON string");
        assert_eq!(back, hostile);

        kill.systemd_unit = None;
        kill.k8s = Some(crate::K8s {
            namespace: Some("ns\n".into()),
            pod: Some("pod\u{1b}".into()),
            container: Some("c\"d".into()),
            ..Default::default()
        });
        let line = kill_line(&kill);
        assert_inert(&line);
        assert!(
            line.contains(r#"pod "ns\n"/"pod\u001b" container "c\"d""#),
            "{line}"
        );
    }

    #[test]
    fn a_container_reads_name_id_image() {
        let mut kill = blank_kill();
        let id = "3f4e9a1c0b7d2e8f6a5c4b3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
        kill.container = Some(crate::Container {
            id: id.into(),
            runtime: Some(crate::Runtime::Docker),
            name: None,
            image: None,
        });
        let line = kill_line(&kill);
        assert!(line.contains(" id 3f4e9a1c0b7d"), "{line}");
        assert!(
            !line.contains(" name ") && !line.contains(" image "),
            "{line}"
        );
        kill.container = Some(crate::Container {
            id: id.into(),
            runtime: Some(crate::Runtime::Docker),
            name: Some("web-1".into()),
            image: Some("nginx:1.27".into()),
        });
        let line = kill_line(&kill);
        assert!(
            line.contains(" name web-1 id 3f4e9a1c0b7d image nginx:1.27"),
            "{line}"
        );
        // Both come from files a container's owner shapes: escaped.
        kill.container = Some(crate::Container {
            id: id.into(),
            runtime: None,
            name: Some("w\u{1b}[2J".into()),
            image: Some("evil\nimage".into()),
        });
        let line = kill_line(&kill);
        assert_inert(&line);
        assert!(
            line.contains(r#" name "w\u001b[2J" id 3f4e9a1c0b7d image "evil\nimage""#),
            "{line}"
        );
    }

    #[test]
    fn ordinary_paths_read_as_they_are() {
        let mut kill = blank_kill();
        kill.victim.cgroup.path = Some("/kubepods.slice/cri-containerd-3f4e.scope".into());
        kill.oom.memcg_path = Some("/kubepods.slice".into());
        let line = kill_line(&kill);
        assert!(
            line.contains(" cgroup /kubepods.slice/cri-containerd-3f4e.scope "),
            "{line}"
        );
        assert!(line.contains(" limit-of /kubepods.slice"), "{line}");
        // A space, a quote or anything not plain ASCII is quoted.
        assert_eq!(plain("/a b"), r#""/a b""#);
        assert_eq!(plain("/café"), r#""/café""#);
        assert_eq!(plain(""), r#""""#);
        assert_eq!(plain("/x\\y"), r#""/x\\y""#);
    }

    #[test]
    fn the_start_line_spells_values_as_the_json_does() {
        let start: crate::Start = serde_json::from_value(serde_json::json!({
            "schema": 1, "time": "t", "boot_ns": 0, "version": "0.1.0",
            "host": {"hostname": "node\u{1b}[2J", "kernel_release": "6.18",
                     "cgroup_mode": "hybrid", "memory_controller": null, "btf": true,
                     "tracefs": null, "page_size": 4096},
            "probes": [{"name": "mark_victim", "mode": "raw_tracepoint", "attempts": []},
                       {"name": "oom_kill_process", "mode": null, "attempts": []}],
            "collector": {"pid": 1, "exit_wait_ms": 0,
                          "oom_score_adj": {"requested": 0, "applied": 0, "error": null},
                          "nice": {"requested": 0, "applied": 0, "error": null}},
            "notes": []
        }))
        .expect("a start record");
        let line = line(&Record::Start(Box::new(start)));
        assert!(line.contains("cgroup hybrid"), "{line}");
        assert!(
            line.contains("mark_victim via raw_tracepoint, oom_kill_process not attached"),
            "{line}"
        );
        assert!(line.contains(r#"tracing on "node\u001b[2J""#), "{line}");
        assert_inert(&line);
    }
}
