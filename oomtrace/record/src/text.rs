//! One readable line per record, for `--format text`: like dmesg's line,
//! but complete. Names a kernel or a user chose (comm) are quoted with JSON
//! escaping, so that a hostile name cannot forge a second line.

use std::fmt::Write as _;

use crate::{Exit, OomKill, Record};

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
                s.host.hostname,
                s.host.kernel_release,
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
        Record::Lost(l) => format!(
            "{} LOST {} kill records and {} exit records (ring buffer full); {} victims \
             untracked; {} kernel records and {} output records dropped by the collector",
            l.time, l.kills, l.exits, l.untracked_victims, l.events_dropped, l.records_dropped
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

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

fn opt_bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), human_bytes)
}

/// `"name"` with JSON-style escaping.
fn quoted(value: Option<&str>) -> String {
    value.map_or_else(
        || "?".to_string(),
        |v| serde_json::to_string(v).unwrap_or_default(),
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
        v.cgroup.path.as_deref().unwrap_or("?"),
    );
    if let Some(m) = &k.memcg {
        let _ = write!(
            line,
            " memcg {}/{}",
            human_bytes(m.usage_bytes),
            m.limit_bytes.map_or_else(|| "max".to_string(), human_bytes)
        );
    }
    if let Some(c) = k.oom.constraint {
        let _ = write!(line, " constraint {}", spelled(c));
    }
    if let Some(p) = &k.oom.memcg_path {
        let _ = write!(line, " limit-of {p}");
    }
    if let Some(scope) = k.oom.limit_scope {
        let _ = write!(line, " ({} limit)", spelled(scope));
    }
    if let Some(k8s) = &k.k8s {
        let _ = write!(
            line,
            " pod {}/{} container {}",
            k8s.namespace.as_deref().unwrap_or("?"),
            k8s.pod.as_deref().unwrap_or("?"),
            k8s.container.as_deref().unwrap_or("?"),
        );
    }
    if let Some(c) = &k.container {
        // 12 hex digits, as `docker ps` and `crictl ps` show ids.
        let _ = write!(line, " id {}", c.id.get(..12).unwrap_or(&c.id));
    } else if let Some(unit) = &k.systemd_unit {
        let _ = write!(line, " unit {unit}");
    }
    if v.container_init == Some(true) {
        line.push_str(" container-init");
    }
    match k.container_survives {
        Some(true) => line.push_str(" container-survives"),
        Some(false) => line.push_str(" container-dies"),
        None => {}
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

    #[test]
    fn a_hostile_comm_stays_on_one_text_line() {
        let mut kill: OomKill = serde_json::from_value(serde_json::json!({
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
        .expect("valid oom_kill");
        kill.victim.comm = Some("a\nb\"c".into());
        let line = kill_line(&kill);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#""a\nb\"c""#), "{line}");
        assert!(line.contains("exit not observed"));
    }
}
